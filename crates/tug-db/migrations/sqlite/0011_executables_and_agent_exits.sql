-- An artifact that is a program: materialised with its executable bits.
ALTER TABLE artifacts ADD COLUMN executable INTEGER NOT NULL DEFAULT 0;
