-- Retention of revocation_events (issue 16): the maintenance loop deletes the
-- oldest events, a prefix in `seq` order, once every link they counted has
-- expired more than --retention-days ago (registry/revocation_events.rs,
-- `prune`). This one row remembers how far it went, so that WatchRevocations
-- can refuse a cursor before it (the events after such a cursor are gone)
-- instead of silently resuming past them; `seq` has gaps, so the oldest
-- retained event alone cannot tell.
CREATE TABLE revocation_events_pruned (
    one      BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    -- Every event with seq <= through_seq is deleted; every later one kept.
    through_seq BIGINT NOT NULL DEFAULT 0
);
INSERT INTO revocation_events_pruned DEFAULT VALUES;
