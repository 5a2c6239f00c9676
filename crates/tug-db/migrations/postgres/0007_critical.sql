-- A critical build is installed by agents at once, outside maintenance
-- windows (Teleport's critical flag).
ALTER TABLE builds ADD COLUMN critical BIGINT NOT NULL DEFAULT 0;
