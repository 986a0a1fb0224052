-- Portable SQL (SQLite and PostgreSQL): TEXT ids, BIGINT millisecond
-- timestamps, JSON documents as TEXT.
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failed_phase TEXT,
    failure_reason TEXT,
    inventory TEXT,
    state_deadline_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE machine_macs (
    mac TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id)
);
CREATE INDEX machine_macs_by_machine ON machine_macs(machine_id);

-- Ids are UUIDv7: they sort by time, so paging is by id.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    machine_id TEXT,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_machine ON events(machine_id, id);

-- Agent credentials, one live per machine, stored as SHA-256 hashes.
CREATE TABLE agent_tokens (
    token_sha256 TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    expires_at_ms BIGINT NOT NULL
);

CREATE TABLE dhcp_leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE dhcp_quarantine (
    ip TEXT PRIMARY KEY,
    until_secs BIGINT NOT NULL
);
