-- Artifacts of kind `reference` point outside the store: their address is
-- kept here, and they have no blob (gc, fsck and blob reads skip rows with
-- a uri).
ALTER TABLE artifacts ADD COLUMN uri TEXT;

-- The release catalog groups a service's deployments into its public
-- environments by build, with the first time each build went there and
-- its last deployment there: this index answers that from the index alone.
CREATE INDEX deployments_catalog ON deployments(service, environment, build_id, deployed_at, seq);
