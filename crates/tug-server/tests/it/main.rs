//! The router in-process over a fresh database of each dialect, with a
//! clock the tests set: the rules that depend on the time, tested at the
//! moments that matter without sleeping.

mod app;
mod approvals;
mod consumer_family;
mod registry;
mod soak;
mod windows;
