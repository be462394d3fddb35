-- Incident response: a revocation stuck on an outage can be abandoned
-- (CancelRevocation) and says so.
ALTER TABLE revocations DROP CONSTRAINT revocations_state_check;
ALTER TABLE revocations ADD CONSTRAINT revocations_state_check
    CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled'));
