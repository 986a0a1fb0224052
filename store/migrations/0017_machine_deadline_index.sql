-- The deadline reaper asks every 2 s for machines past their deadline;
-- without an index that reads every machine row each time.
CREATE INDEX IF NOT EXISTS machines_state_deadline ON machines (state_deadline_ms) WHERE state_deadline_ms IS NOT NULL;
