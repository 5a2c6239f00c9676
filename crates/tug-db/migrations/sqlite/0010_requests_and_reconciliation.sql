-- One request, at most one deployment; one pending request per build and
-- environment; cheap lookups for expiry and for the auto-release
-- reconciliation.

-- The request a deployment carried out (NULL: none was needed). History
-- names its approvers through it.
ALTER TABLE deployments ADD COLUMN request_id TEXT REFERENCES deployment_requests(id);
CREATE INDEX deployments_request ON deployments(request_id);

-- Concurrent deployments may have left several pending requests for one
-- build and environment; keep the newest (ids are time-ordered) so that
-- the unique index below can be built.
UPDATE deployment_requests SET state = 'superseded'
WHERE state = 'pending'
  AND id NOT IN (
    SELECT MAX(id) FROM deployment_requests WHERE state = 'pending'
    GROUP BY service, environment, build_id
  );
CREATE UNIQUE INDEX deployment_requests_one_pending
    ON deployment_requests(service, environment, build_id) WHERE state = 'pending';

-- Pending requests by due time, for the expiry sweep.
CREATE INDEX deployment_requests_due ON deployment_requests(state, expires_at);

-- The newest sealed build of a branch by seal time, for auto-release.
CREATE INDEX builds_service_branch_sealed ON builds(service, branch, state, sealed_at);
