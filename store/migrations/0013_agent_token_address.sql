-- The address a boot script (and so its agent token) was handed to: every
-- agent call must come from there. NULL for tokens issued before.
ALTER TABLE agent_tokens ADD COLUMN peer_ip TEXT;
