-- The image catalog: content lives in data_dir/images/<name>.raw.zst.
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    os TEXT NOT NULL,
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    boot_mode TEXT NOT NULL,
    -- importing | available | failed
    state TEXT NOT NULL,
    raw_bytes BIGINT,
    sha256 TEXT,
    stored_bytes BIGINT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- A machine's current deployment; its history is in events.
CREATE TABLE deployments (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    image TEXT NOT NULL REFERENCES images(name),
    -- JSON: hostname, SSH keys, disk hint.
    spec TEXT NOT NULL,
    -- requested | writing | verifying | written | failed
    phase TEXT NOT NULL,
    bytes_written BIGINT NOT NULL,
    total_bytes BIGINT NOT NULL,
    disk TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX deployments_by_image ON deployments(image);
