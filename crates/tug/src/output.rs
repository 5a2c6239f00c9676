//! Printing results: a readable table by default, JSON with `--output json`.
//!
//! Everything the CLI prints to stdout goes through [`write`], which turns a
//! closed pipe (`tug token list | head -3`) into [`ClosedPipe`]; `main` ends
//! quietly with status 0 on it, as ripgrep does, instead of panicking.
//!
//! Tables fit the terminal: the width is `COLUMNS` when set (also when
//! piped), else the terminal's, else unlimited (piped output keeps every
//! column). What does not fit is dropped, least important column first,
//! after long free text is shortened; an id is never wrapped or cut.

use std::fmt;
use std::io::Write;

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::ContentArrangement;
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use crate::cli::Output;

/// Stdout was closed by its reader: the output is no longer wanted, which
/// is not an error.
#[derive(Debug)]
pub struct ClosedPipe;

impl fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Writes `text` and a newline to stdout.
pub fn write(text: impl fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Prints `value` as pretty JSON.
pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    write(serde_json::to_string_pretty(value)?)
}

/// Prints either the JSON value or what `table` draws.
pub fn print<T: Serialize>(out: Output, value: &T, table: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    match out {
        Output::Json => json(value),
        Output::Table => write(table(value)),
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

/// `1 artifact`, `2 artifacts`.
pub fn plural(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A build's (or any id's) short form when the server sent one, else the
/// whole id.
pub fn short(short_id: &str, id: &impl ToString) -> String {
    if short_id.is_empty() {
        id.to_string()
    } else {
        short_id.to_string()
    }
}

/// The width tables must fit: `COLUMNS`, else the terminal's, else none.
pub fn width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
    {
        if n > 0 {
            return Some(n);
        }
    }
    comfy_table::Table::new().width().map(usize::from)
}

/// One column: its header, how readily it is dropped on a narrow
/// terminal, and whether its text may be shortened.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    header: &'static str,
    /// 0: always shown; otherwise higher numbers go first.
    drop_order: u8,
    /// Free text (a commit message, a reason) that may be cut with `…`.
    flexible: bool,
}

/// A column that is never dropped.
pub const fn keep(header: &'static str) -> Column {
    Column {
        header,
        drop_order: 0,
        flexible: false,
    }
}

/// A column dropped in `drop_order` (higher first) when the table is too wide.
pub const fn col(header: &'static str, drop_order: u8) -> Column {
    Column {
        header,
        drop_order,
        flexible: false,
    }
}

/// Free text: shortened first, then dropped in `drop_order`.
pub const fn text(header: &'static str, drop_order: u8) -> Column {
    Column {
        header,
        drop_order,
        flexible: true,
    }
}

/// A table of rows under a header, laid out to fit [`width`].
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

/// The narrowest a shortened text column becomes before it is dropped.
const TEXT_MIN: usize = 12;

impl Table {
    pub fn new(columns: &[Column]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column, in order.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Draws the table at most `width` wide.
    pub fn render(&self, width: Option<usize>) -> String {
        let mut shown: Vec<bool> = vec![true; self.columns.len()];
        let mut limit: Vec<Option<usize>> = vec![None; self.columns.len()];
        let mut order: Vec<usize> = (0..self.columns.len())
            .filter(|&i| self.columns[i].drop_order > 0)
            .collect();
        // Highest drop order first; among equals, the rightmost.
        order.sort_by_key(|&i| (std::cmp::Reverse(self.columns[i].drop_order), std::cmp::Reverse(i)));
        // Each step: (column, shorten it rather than drop it). Free text is
        // shortened before it is dropped.
        let mut steps = order
            .into_iter()
            .flat_map(|i| [(i, true), (i, false)])
            .filter(|(i, shorten)| !shorten || self.columns[*i].flexible);
        loop {
            let drawn = self.draw(&shown, &limit);
            let Some(max) = width else { return drawn };
            let wide = drawn.lines().map(UnicodeWidthStr::width).max().unwrap_or(0);
            if wide <= max {
                return drawn;
            }
            let Some((i, shorten)) = steps.next() else { return drawn };
            if !shorten {
                shown[i] = false;
                continue;
            }
            let natural = self
                .rows
                .iter()
                .filter_map(|r| r.get(i))
                .flat_map(|c| c.lines())
                .map(UnicodeWidthStr::width)
                .max()
                .unwrap_or(0);
            let fits = natural.saturating_sub(wide - max);
            if fits >= TEXT_MIN {
                limit[i] = Some(fits);
            }
        }
    }

    fn draw(&self, shown: &[bool], limit: &[Option<usize>]) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(
                self.columns
                    .iter()
                    .zip(shown)
                    .filter(|(_, s)| **s)
                    .map(|(c, _)| c.header)
                    .collect::<Vec<_>>(),
            );
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .filter(|(i, _)| shown.get(*i).copied().unwrap_or(false))
                .map(|(i, c)| match limit[i] {
                    Some(n) => c.lines().map(|l| cut(l, n)).collect::<Vec<_>>().join("\n"),
                    None => c.clone(),
                })
                .collect();
            t.add_row(cells);
        }
        t.to_string()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(width()))
    }
}

/// `text` cut to at most `max` display columns, ending in `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.width() <= max {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&[keep("ID"), col("WHO", 2), text("MESSAGE", 3), col("WHEN", 1)]);
        t.row(vec![
            "0190c3f2-6a2b-7d4e".into(),
            "alice".into(),
            "a rather long commit message that goes on and on".into(),
            "2026-11-22 03:14:05".into(),
        ]);
        t
    }

    fn widest(s: &str) -> usize {
        s.lines().map(UnicodeWidthStr::width).max().unwrap_or(0)
    }

    #[test]
    fn without_a_width_every_column_is_shown_whole() {
        let s = sample().render(None);
        assert!(s.contains("goes on and on") && s.contains("alice"), "{s}");
    }

    #[test]
    fn text_is_shortened_then_columns_dropped_and_ids_never_cut() {
        let s = sample().render(Some(70));
        assert!(widest(&s) <= 70, "{s}");
        assert!(s.contains('…') && s.contains("alice"), "{s}");
        let s = sample().render(Some(40));
        assert!(widest(&s) <= 40, "{s}");
        assert!(!s.contains("MESSAGE") && s.contains("0190c3f2-6a2b-7d4e"), "{s}");
        // Too narrow for anything: the id stays whole on one line.
        let s = sample().render(Some(10));
        assert!(s.contains("0190c3f2-6a2b-7d4e"), "{s}");
    }

    #[test]
    fn plurals_read_right() {
        assert_eq!(plural(1u64, "artifact"), "1 artifact");
        assert_eq!(plural(0u64, "agent"), "0 agents");
        assert_eq!(plural(2u32, "blob"), "2 blobs");
    }

    #[test]
    fn cut_respects_wide_characters() {
        assert_eq!(cut("日本語のテキスト", 7), "日本語…");
        assert_eq!(cut("short", 10), "short");
    }
}
