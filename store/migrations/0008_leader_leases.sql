-- Leader leases: which appliance on a shared database runs each kind of
-- background work (deadline reaper, BMC and UPS pollers) and until when.
-- Taken and renewed with a conditional upsert (see api/src/leader.rs).
CREATE TABLE leader_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
