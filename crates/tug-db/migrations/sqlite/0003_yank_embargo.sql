-- Yanked builds never deploy again; embargoed builds (security releases)
-- are visible to admins and approvers only and deploy only to private
-- environments until they are unembargoed.
ALTER TABLE builds ADD COLUMN yanked_at INTEGER;
ALTER TABLE builds ADD COLUMN yanked_by TEXT;
ALTER TABLE builds ADD COLUMN yank_reason TEXT;
ALTER TABLE builds ADD COLUMN embargoed INTEGER NOT NULL DEFAULT 0;
