-- Operator API tokens, each with a role (admin | operator | viewer). The
-- secret is shown once, at creation, and stored as its SHA-256 digest. The
-- appliance's own admin token (api.token or data_dir/admin-token) is not
-- stored here.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    -- The name of the token that created this one.
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    -- NULL: never expires.
    expires_at_ms BIGINT,
    -- Updated at most once a minute.
    last_used_at_ms BIGINT
);

-- Every mutating operator request (POST, PUT, PATCH, DELETE), written
-- after its response: who, what, when and the outcome. Never a body.
-- Ids are UUIDv7: they sort by time, so paging is by id.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    -- NULL with token_name 'anonymous' when no valid token was given.
    token_id TEXT,
    token_name TEXT NOT NULL,
    role TEXT,
    method TEXT NOT NULL,
    -- The matched route template (/api/v1/machines/{id}/deploy), if any.
    route TEXT,
    -- The request path without its query.
    path TEXT NOT NULL,
    -- The route's path parameter ({id}, {name}), if any.
    target TEXT,
    status BIGINT NOT NULL
);
