-- Access decided by token id, not by name.
--
-- builds.created_by_token: the id of the token that created the build. An
-- embargoed build is visible to that token (and not to a later token that
-- reuses the name). Builds made before this column existed take the token
-- that bore the name when the build was created: names are unique among
-- active tokens, so at most one did.
ALTER TABLE builds ADD COLUMN created_by_token TEXT;
UPDATE builds SET created_by_token = (
    SELECT t.id FROM tokens t
    WHERE t.name = builds.created_by
      AND t.created_at <= builds.created_at
      AND (t.revoked_at IS NULL OR t.revoked_at > builds.created_at)
    ORDER BY t.created_at DESC
    LIMIT 1
);

-- tokens.environment: an agent token may be scoped to one environment of
-- its service (the agents of a private environment see the embargoed
-- builds deployed there).
ALTER TABLE tokens ADD COLUMN environment TEXT;

-- events.build_id: the build an event is about, so that reading decides
-- what each reader may see of it (events are recorded for every build, and
-- hidden or redacted when read).
ALTER TABLE events ADD COLUMN build_id TEXT;
UPDATE events SET build_id = json_extract(payload, '$.build') WHERE json_valid(payload);
