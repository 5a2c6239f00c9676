//! The README's walkthrough, run as written: every ```sh block in order in
//! one bash session (so variables carry from block to block), every TOML
//! block that names its file (`# pipeline.toml` on its first line) written
//! to that file at its place, against a real `tug server` started in the
//! same directory. The README cannot drift from the binary.
//!
//! What the test changes, and why:
//! - `http://127.0.0.1:7700` becomes the test server's address (it listens
//!   on a free port);
//! - `tug` is the binary under test, first on `PATH`;
//! - a block right after `<!-- readme-test: skip -->` is not run (starting
//!   the server, running the test suite, commands for another machine); its
//!   TOML is still checked;
//! - a command whose comment starts with `# fails` must fail: the README
//!   shows a refusal there.
//!
//! Every TOML block must parse, named or not: a reader copies them too.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{TestServer, TUG};

const README: &str = include_str!("../../../../README.md");
const SKIP: &str = "<!-- readme-test: skip -->";

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// The info string after the opening fence (`sh`, `toml`, …).
    lang: String,
    /// The README line the block's first line is on (1-based).
    line: usize,
    body: String,
    skip: bool,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut skip_next = false;
    for (i, line) in readme.lines().enumerate() {
        match open.as_mut() {
            Some(block) => {
                if line.trim_start().starts_with("```") {
                    out.push(open.take().expect("a block is open"));
                } else {
                    block.body.push_str(line);
                    block.body.push('\n');
                }
            }
            None => {
                if let Some(lang) = line.trim_start().strip_prefix("```") {
                    open = Some(Block {
                        lang: lang.trim().to_string(),
                        line: i + 2,
                        body: String::new(),
                        skip: std::mem::take(&mut skip_next),
                    });
                } else if line.trim() == SKIP {
                    skip_next = true;
                } else if !line.trim().is_empty() {
                    skip_next = skip_next && line.trim_start().starts_with("<!--");
                }
            }
        }
    }
    assert!(open.is_none(), "the README has an unclosed code fence");
    out
}

/// The file a TOML block says it is, from a first line like `# pipeline.toml`.
fn toml_file(body: &str) -> Option<&str> {
    let first = body.lines().next()?.trim().strip_prefix('#')?.trim();
    (first.ends_with(".toml") && !first.contains(char::is_whitespace)).then_some(first)
}

/// Whether a command line's comment says it must fail.
fn must_fail(line: &str) -> Option<&str> {
    let (command, comment) = line.split_once(" # ")?;
    comment.trim_start().starts_with("fails").then_some(command)
}

/// The bash script for the runnable blocks.
fn script(blocks: &[Block], url: &str) -> String {
    let mut s = String::from(
        "set -euo pipefail\n\
         trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT\n",
    );
    for b in blocks.iter().filter(|b| !b.skip) {
        match b.lang.as_str() {
            "sh" => {
                s.push_str(&format!("echo '>>> README line {}' >&2\n", b.line));
                for (n, line) in b.body.lines().enumerate() {
                    let line = line.replace("http://127.0.0.1:7700", url);
                    match must_fail(&line) {
                        Some(command) => s.push_str(&format!(
                            "if {command}; then echo 'README line {}: this command should have failed' >&2; exit 1; fi\n",
                            b.line + n
                        )),
                        None => {
                            s.push_str(&line);
                            s.push('\n');
                        }
                    }
                }
            }
            "toml" => {
                if let Some(file) = toml_file(&b.body) {
                    s.push_str(&format!(
                        "cat > {file} <<'README_TOML_EOF'\n{}README_TOML_EOF\n",
                        b.body
                    ));
                }
            }
            _ => {}
        }
    }
    s
}

#[test]
fn every_toml_block_of_the_readme_parses() {
    for b in blocks(README).iter().filter(|b| b.lang == "toml") {
        if let Err(e) = b.body.parse::<toml::Table>() {
            panic!("the TOML block at README line {} does not parse: {e}", b.line);
        }
    }
}

#[test]
fn the_readme_has_a_walkthrough_to_run() {
    let all = blocks(README);
    let runnable = all.iter().filter(|b| b.lang == "sh" && !b.skip).count();
    assert!(runnable >= 5, "only {runnable} runnable sh blocks found");
    for b in &all {
        assert!(
            matches!(b.lang.as_str(), "sh" | "toml" | "text" | "json"),
            "README line {}: unknown block language {:?} (use sh, toml, text or json)",
            b.line,
            b.lang
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    // The server runs in the directory the walkthrough runs in, with its
    // data in ./tug-data, as the quick start has it.
    let server = TestServer::start_in(dir, crate::support::Backend::Embedded, &[], &[]);
    let bin = cwd.join(".bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(TUG, bin.join("tug")).unwrap();
    let script_text = script(&blocks(README), &server.url);
    let script_path = cwd.join(".readme.sh");
    std::fs::write(&script_path, &script_text).unwrap();
    let out = run_script(&script_path, &cwd, &bin, &server.url);
    assert!(
        out.status.success(),
        "the README walkthrough failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&server.log(), 40),
    );
}

fn run_script(script: &Path, cwd: &Path, bin: &Path, url: &str) -> std::process::Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .arg(script)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", cwd)
        .env("TUG_SERVER", url)
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod parsing {
    use super::*;

    #[test]
    fn blocks_carry_their_language_line_and_skip_mark() {
        let text = "intro\n\n```sh\necho a\n```\n\n<!-- readme-test: skip -->\n```sh\nserver\n```\n```toml\n# p.toml\nx = 1\n```\n";
        let b = blocks(text);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].lang.as_str(), b[0].line, b[0].skip), ("sh", 4, false));
        assert!(b[1].skip);
        assert_eq!(toml_file(&b[2].body), Some("p.toml"));
    }

    #[test]
    fn a_fails_comment_inverts_the_command() {
        assert_eq!(
            must_fail("tug build seal \"$B\"   # fails: missing"),
            Some("tug build seal \"$B\"  ")
        );
        assert_eq!(must_fail("tug build seal \"$B\"   # seals it"), None);
    }
}
