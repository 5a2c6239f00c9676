-- The event log as a hash chain, written in the same transaction as the
-- change each event describes (see tug_db::events and tug_core::audit).
-- Each event stores the hash of the event before it and its own. The one
-- row of event_log_head holds the newest event's id and hash: a
-- transaction appends events by bumping that id as its last statements, so
-- ids and hashes are assigned in commit order, with no gaps.
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;

CREATE TABLE event_log_head (
    one             INTEGER PRIMARY KEY CHECK (one = 1),
    id              INTEGER NOT NULL,
    -- NULL while the events recorded before the chain wait to be chained.
    hash            TEXT,
    -- Events up to this id were recorded before the chain existed: the
    -- server rewrites them in the event schema and chains them when it
    -- starts, before it appends anything. An empty log starts at the
    -- genesis hash (all zeros).
    unchained_until INTEGER NOT NULL
);
INSERT INTO event_log_head (one, id, hash, unchained_until)
SELECT 1, COALESCE(MAX(id), 0),
       CASE WHEN COUNT(*) = 0
            THEN 'sha256:0000000000000000000000000000000000000000000000000000000000000000' END,
       COALESCE(MAX(id), 0)
FROM events;
