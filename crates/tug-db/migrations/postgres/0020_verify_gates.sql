-- Metric gates (an environment's `verify`): per deployment of an
-- environment (service, environment, seq), what the sampler last learnt
-- from Prometheus. `within_since` is when the query's value last came
-- within bounds and has stayed there (NULL while it is out of bounds, has
-- no value, or could not be read); a new deployment has a new row, so the
-- time counts only while that build ran there. Times are milliseconds
-- since the epoch.
CREATE TABLE verify_gates (
    service      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    build_id     TEXT NOT NULL,
    within_since BIGINT,
    last_sample  BIGINT NOT NULL,
    last_value   DOUBLE PRECISION,
    last_error   TEXT,
    PRIMARY KEY (service, environment, seq)
);
