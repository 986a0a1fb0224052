-- A release in progress: how the machine's disks are to be wiped.
CREATE TABLE releases (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    -- quick | full
    mode TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
