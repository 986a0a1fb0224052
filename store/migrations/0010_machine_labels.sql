-- Operator API: machine labels, optimistic concurrency and idempotent POSTs.

-- Labels are rows, not a JSON document: `label=k=v` filters are an indexed
-- join on both SQLite and PostgreSQL, without JSON functions that differ
-- between them.
CREATE TABLE machine_labels (
    machine_id TEXT NOT NULL REFERENCES machines(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (machine_id, name)
);
CREATE INDEX machine_labels_by_pair ON machine_labels(name, value);
CREATE INDEX machines_by_rack ON machines(rack);
CREATE INDEX machines_by_state ON machines(state);

-- Bumped by every operator edit (PATCH, lifecycle actions); the ETag is a
-- digest of the whole machine document, so other changes show in it too.
ALTER TABLE machines ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

-- The first response to a POST that starts work, per caller, request path
-- and Idempotency-Key. status 0: the first request is still running.
-- Entries older than 24 h are deleted and no longer match.
CREATE TABLE idempotency_keys (
    token_id TEXT NOT NULL,
    route TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status BIGINT NOT NULL,
    content_type TEXT,
    body TEXT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (token_id, route, idem_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at_ms);
