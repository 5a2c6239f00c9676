//! Printing results: a readable table by default, JSON with `--output json`.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::cli::Output;

/// Prints `value` as pretty JSON.
pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// Prints either the JSON value or what `table` draws.
pub fn print<T: Serialize>(out: Output, value: &T, table: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    match out {
        Output::Json => json(value),
        Output::Table => {
            println!("{}", table(value));
            Ok(())
        }
    }
}

/// A time for tables: `2026-11-22 03:14:05`.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Bytes for humans: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
