-- Repeated denials are aggregated (src/audit.rs): the first of a peer's denials
-- for one cause is a row, and the repeats within a window are one more row
-- whose count says how many requests it stands for. Every other row is one.

ALTER TABLE audit_events ADD COLUMN count BIGINT NOT NULL DEFAULT 1
    CONSTRAINT audit_events_count_positive CHECK (count >= 1);
