-- A deployment's cluster join spec gets a column of its own beside the
-- rest of its spec (`store::deploy` reads both into one typed spec), so
-- the nodes of a cluster are found without parsing every spec. Rows
-- written before this keep their cluster inside `spec`; reading falls
-- back to it, so nothing is rewritten here.
ALTER TABLE deployments ADD COLUMN cluster TEXT;
