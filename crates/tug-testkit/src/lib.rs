//! Test fixtures for Tugboat: a fresh PostgreSQL database per test on the
//! server the test command started, a fresh S3 prefix per test on the
//! SeaweedFS it started, temporary directories.
//!
//! The test command (`scripts/test`) starts PostgreSQL and SeaweedFS and
//! exports where they are in `TUG_TEST_*` variables. A test that needs one
//! and finds no variable fails with a message saying how to run the suite:
//! a missing component is never a silent skip.

use std::env;

/// Panics with a clear message when the test command did not set `var`.
pub fn required_env(var: &str) -> String {
    env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the suite with scripts/test, which starts PostgreSQL and SeaweedFS and exports TUG_TEST_* variables"
        )
    })
}

/// A short random lowercase suffix for database names and prefixes.
pub fn unique_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..12).map(|_| (b'a' + rng.gen_range(0..26)) as char).collect()
}
