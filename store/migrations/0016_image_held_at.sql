-- The boot face (http://ADDRESS:PORT) of the appliance that holds an
-- image's content; other appliances on the same database fetch it from
-- there, checked against sha256, the first time a machine asks them.
ALTER TABLE images ADD COLUMN held_at TEXT;
