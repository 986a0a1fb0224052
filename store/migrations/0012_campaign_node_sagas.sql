-- A campaign node's OS refresh is a saga whose phase is stored (JSON of
-- `model::refresh::Saga`), so a restarted appliance goes on from it.
-- What an agent is handed while a node waits (a Swarm operation or a
-- drain command, JSON of `model::refresh::Wanted`) gets a column of its
-- own: `task` keeps only the BMC task of a firmware update.
ALTER TABLE campaign_nodes ADD COLUMN saga TEXT;
ALTER TABLE campaign_nodes ADD COLUMN wanted TEXT;
UPDATE campaign_nodes SET wanted = '{"hook":' || task || '}', task = NULL WHERE task LIKE '{"hook_id"%';
UPDATE campaign_nodes SET wanted = '{"cluster_op":' || task || '}', task = NULL WHERE task LIKE '{"cluster"%';
