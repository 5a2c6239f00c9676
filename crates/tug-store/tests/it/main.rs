//! Integration tests of tug-store: one conformance suite that every backend
//! must pass, run on the filesystem and on the S3-compatible server the
//! test command started, plus what only the filesystem backend can show.

mod conformance;
mod fs;
mod support;
