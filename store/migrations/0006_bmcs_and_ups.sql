-- Out-of-band management. Passwords are sealed (ChaCha20-Poly1305) by the
-- appliance before they are stored; the API never returns them.
CREATE TABLE bmcs (
    id TEXT PRIMARY KEY,
    -- "https://10.0.0.5" for Redfish, "10.0.0.5:623" for IPMI.
    address TEXT NOT NULL UNIQUE,
    protocol TEXT NOT NULL,
    username TEXT NOT NULL,
    password_sealed TEXT NOT NULL,
    -- JSON TlsTrust.
    tls TEXT NOT NULL,
    machine_id TEXT REFERENCES machines(id),
    -- What the BMC says its system is (to link it to in-band facts).
    system_uuid TEXT,
    serial TEXT,
    power_state TEXT,
    -- JSON BmcInventory, the last one read.
    inventory TEXT,
    last_error TEXT,
    last_error_kind TEXT,
    last_ok_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX bmcs_by_machine ON bmcs(machine_id);

-- Identity a machine is found by besides its MACs: from in-band DMI or
-- from its BMC, whichever was known first.
ALTER TABLE machines ADD COLUMN system_uuid TEXT;
ALTER TABLE machines ADD COLUMN serial TEXT;
ALTER TABLE machines ADD COLUMN rack TEXT;
CREATE INDEX machines_by_uuid ON machines(system_uuid);
CREATE INDEX machines_by_serial ON machines(serial);

-- Every out-of-band inventory read that differed from the one before.
CREATE TABLE bmc_inventory_history (
    id TEXT PRIMARY KEY,
    bmc_id TEXT NOT NULL REFERENCES bmcs(id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    inventory TEXT NOT NULL
);
CREATE INDEX bmc_inventory_history_by_bmc ON bmc_inventory_history(bmc_id, id);

CREATE TABLE ups (
    name TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,
    -- NUT's UPS name, the SNMP community, or the Redfish resource.
    target TEXT NOT NULL,
    username TEXT,
    password_sealed TEXT,
    tls TEXT NOT NULL,
    -- JSON: {"racks": [...], "machines": [...]}
    feeds TEXT NOT NULL,
    -- JSON UpsState, the last one read.
    state TEXT,
    last_error TEXT,
    last_ok_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
