-- The node agent's credential on a deployed OS, one live per machine,
-- stored as a SHA-256 digest. Issued with each deploy, gone with release.
CREATE TABLE node_tokens (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

-- What a deployed node's agent last reported (JSON).
CREATE TABLE node_status (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    status TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

-- Clusters Slipway forms itself: the first node to ask creates a Swarm
-- (initiator) and hands back its join tokens; the rest join with them.
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    initiator TEXT NOT NULL REFERENCES machines(id),
    endpoint TEXT,
    worker_token TEXT,
    manager_token TEXT,
    -- JSON: members as the cluster's manager last reported them.
    members TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
