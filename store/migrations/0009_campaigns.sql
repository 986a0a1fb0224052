-- Refresh campaigns (firmware now, OS refresh next): what the operator
-- asked for, where the campaign is, and every target node's progress, so
-- a restarted appliance goes on where it was and never redoes a node.
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- JSON, as the API takes them: Targets, Action, Schedule, Rollout, Gates.
    targets TEXT NOT NULL,
    action TEXT NOT NULL,
    schedule TEXT NOT NULL,
    rollout TEXT NOT NULL,
    gates TEXT NOT NULL,
    -- scheduled, running, held, paused, completed, failed, cancelled.
    state TEXT NOT NULL,
    reason TEXT,
    -- Failed nodes an operator resumed past.
    acknowledged_failures BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT
);
CREATE INDEX campaigns_by_state ON campaigns(state);

CREATE TABLE campaign_nodes (
    campaign_id TEXT NOT NULL REFERENCES campaigns(id),
    machine_id TEXT NOT NULL REFERENCES machines(id),
    -- The rollout order.
    position BIGINT NOT NULL,
    rack TEXT,
    -- pending, applying, verifying, done, failed.
    state TEXT NOT NULL,
    reason TEXT,
    -- The BMC task polled for the update (kept to poll again after a restart).
    task TEXT,
    old_version TEXT,
    new_version TEXT,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, machine_id)
);
CREATE INDEX campaign_nodes_by_machine ON campaign_nodes(machine_id);
CREATE INDEX campaign_nodes_by_state ON campaign_nodes(state);
