-- Upload forms (issue 15): IssueUploadForm records a browser form upload
-- (a presigned POST policy) as a link with method POST, counted in every
-- blast radius like any other link.
--
-- The method check is widened to POST. NOT VALID: every existing row already
-- satisfies the narrower check it replaces, so there is nothing to validate,
-- and skipping the scan keeps the upgrade instant on a large registry (new
-- rows and new partitions, made LIKE links INCLUDING CONSTRAINTS, are checked).
ALTER TABLE links DROP CONSTRAINT links_method_check;
ALTER TABLE links ADD CONSTRAINT links_method_check
    CHECK (method IN ('GET', 'PUT', 'HEAD', 'DELETE', 'POST')) NOT VALID;

-- A form bounds either one exact key or every key starting with a prefix
-- (`starts-with $key`): object_key holds the key or the prefix, and this
-- says which. Only a form may name a prefix (a URL addresses one object).
-- A constant default: no table rewrite.
ALTER TABLE links ADD COLUMN object_key_is_prefix BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE links ADD CONSTRAINT links_prefix_only_for_forms
    CHECK (NOT object_key_is_prefix OR method = 'POST') NOT VALID;
