-- An artifact that is a program: materialised with its executable bits.
ALTER TABLE artifacts ADD COLUMN executable BIGINT NOT NULL DEFAULT 0;

-- Why an agent in state 'waiting' waits, and how the process it supervises
-- last ended on its own (the build it ran, its exit code or the signal that
-- killed it, when, and the end of its stderr).
ALTER TABLE agents ADD COLUMN waiting TEXT;
ALTER TABLE agents ADD COLUMN exit_build TEXT;
ALTER TABLE agents ADD COLUMN exit_code BIGINT;
ALTER TABLE agents ADD COLUMN exit_signal TEXT;
ALTER TABLE agents ADD COLUMN exit_at BIGINT;
ALTER TABLE agents ADD COLUMN exit_stderr TEXT;
