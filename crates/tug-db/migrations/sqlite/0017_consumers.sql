-- Durable consumers of the event log (see tug_db::consumers). Each row is
-- one consumer: its cursor (the id of the last event it handled durably)
-- and its lease (which server runs it, until when). A server takes the
-- lease when it is free or expired, bumping epoch; it moves the cursor only
-- while holder and epoch are still its own, so a server that lost the
-- lease can never move the cursor again.
CREATE TABLE consumers (
    name        TEXT PRIMARY KEY,
    cursor      INTEGER NOT NULL DEFAULT 0,
    holder      TEXT,
    -- Milliseconds since the epoch, by the holder's clock.
    lease_until INTEGER NOT NULL DEFAULT 0,
    epoch       INTEGER NOT NULL DEFAULT 0
);
