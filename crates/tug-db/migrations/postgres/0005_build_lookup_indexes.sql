-- The newest sealed build of a branch or a version (release --branch,
-- release --version, promote into the first environment) without reading
-- the service's whole history.
CREATE INDEX builds_service_branch ON builds(service, branch, state, created_at);
CREATE INDEX builds_service_version ON builds(service, version, state, created_at);
