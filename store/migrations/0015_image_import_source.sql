-- Where an import by path reads from (JSON: path, format, sha256), so an
-- import cut off by a crash is started again at the next start.
ALTER TABLE images ADD COLUMN import_source TEXT;
