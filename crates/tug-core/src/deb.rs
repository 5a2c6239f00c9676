//! Debian packages and the APT repository indexes made from them, as pure
//! functions over bytes and text: where a package's `control.tar` member
//! lies in its `ar` archive, the grammar of a control paragraph and the
//! fields a package must carry, and the `Packages` stanzas and `Release`
//! file of a repository. Reading blobs, decompressing and signing happen in
//! `tug-service`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Why bytes are not a Debian binary package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebError {
    #[error("it is not an ar archive (a .deb starts with \"!<arch>\")")]
    NotAr,
    #[error("its ar member header at byte {offset} is malformed")]
    BadMember { offset: usize },
    #[error("its first member is {0:?}, not debian-binary")]
    NoDebianBinary(String),
    #[error("its debian-binary says {0:?}; only format 2.x is accepted")]
    BadFormat(String),
    #[error("its second member is {0:?}, not control.tar, control.tar.gz, control.tar.xz or control.tar.zst")]
    NoControlTar(String),
    #[error("its control.tar is {size} bytes, more than the {limit} accepted")]
    ControlTooLarge { size: u64, limit: u64 },
    #[error("its control file: {0}")]
    Control(String),
}

/// How a package's `control.tar` member is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

/// Where the control archive lies, or how many bytes of the package are
/// needed to find out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMember {
    /// Read at least this many bytes from the start of the package.
    NeedBytes(usize),
    Found {
        compression: Compression,
        start: usize,
        end: usize,
    },
}

/// The largest control archive accepted: control files are a few KiB, and
/// the whole member is held in memory while it is read.
pub const MAX_CONTROL_TAR: u64 = 16 << 20;

const AR_MAGIC: &[u8] = b"!<arch>\n";
const AR_HEADER: usize = 60;

/// An `ar` member header at `offset`: the member's name and data range.
fn ar_member(bytes: &[u8], offset: usize) -> Result<Option<(String, usize, u64)>, DebError> {
    let Some(header) = bytes.get(offset..offset + AR_HEADER) else {
        return Ok(None);
    };
    let bad = || DebError::BadMember { offset };
    if &header[58..60] != b"`\n" {
        return Err(bad());
    }
    let name = std::str::from_utf8(&header[..16]).map_err(|_| bad())?;
    let name = name.trim_end().trim_end_matches('/').to_string();
    let size: u64 = std::str::from_utf8(&header[48..58])
        .map_err(|_| bad())?
        .trim()
        .parse()
        .map_err(|_| bad())?;
    Ok(Some((name, offset + AR_HEADER, size)))
}

/// Finds the `control.tar*` member in the first bytes of a package, which
/// must be an `ar` archive of `debian-binary` (format 2.x) followed by the
/// control archive, as `dpkg-deb` builds it.
pub fn control_member(prefix: &[u8]) -> Result<ControlMember, DebError> {
    if prefix.len() < AR_MAGIC.len() + AR_HEADER {
        if !AR_MAGIC.starts_with(&prefix[..prefix.len().min(AR_MAGIC.len())]) {
            return Err(DebError::NotAr);
        }
        return Ok(ControlMember::NeedBytes(AR_MAGIC.len() + AR_HEADER));
    }
    if &prefix[..AR_MAGIC.len()] != AR_MAGIC {
        return Err(DebError::NotAr);
    }
    let first = AR_MAGIC.len();
    let Some((name, start, size)) = ar_member(prefix, first)? else {
        return Ok(ControlMember::NeedBytes(first + AR_HEADER));
    };
    if name != "debian-binary" {
        return Err(DebError::NoDebianBinary(name.chars().take(16).collect()));
    }
    if size > 64 {
        return Err(DebError::BadFormat(format!("{size} bytes")));
    }
    // Checked above: the size is tiny, so these sums cannot overflow.
    let end = start + size as usize;
    let Some(version) = prefix.get(start..end) else {
        return Ok(ControlMember::NeedBytes(end));
    };
    let version = String::from_utf8_lossy(version);
    if !version.starts_with("2.") {
        return Err(DebError::BadFormat(version.trim().chars().take(16).collect()));
    }
    let second = end + (end % 2);
    let Some((name, start, size)) = ar_member(prefix, second)? else {
        return Ok(ControlMember::NeedBytes(second + AR_HEADER));
    };
    let compression = match name.as_str() {
        "control.tar" => Compression::None,
        "control.tar.gz" => Compression::Gzip,
        "control.tar.xz" => Compression::Xz,
        "control.tar.zst" => Compression::Zstd,
        other => return Err(DebError::NoControlTar(other.chars().take(16).collect())),
    };
    if size > MAX_CONTROL_TAR {
        return Err(DebError::ControlTooLarge {
            size,
            limit: MAX_CONTROL_TAR,
        });
    }
    // At most MAX_CONTROL_TAR past a small offset: no overflow.
    let end = start + size as usize;
    if prefix.len() < end {
        return Ok(ControlMember::NeedBytes(end));
    }
    Ok(ControlMember::Found {
        compression,
        start,
        end,
    })
}

/// One control paragraph: its fields in order, values as written (a
/// multi-line value keeps its continuation lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paragraph {
    fields: Vec<(String, String)>,
}

impl Paragraph {
    /// Parses one paragraph (a package's `control` file). Comments and
    /// blank lines around it are allowed; a second paragraph is not.
    pub fn parse(text: &str) -> Result<Paragraph, DebError> {
        let err = |m: String| DebError::Control(m);
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut ended = false;
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if line.starts_with('#') {
                continue;
            }
            if line.trim().is_empty() {
                ended = !fields.is_empty();
                continue;
            }
            if ended {
                return Err(err(format!("line {n} starts a second paragraph; a package has one")));
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = fields.last_mut() else {
                    return Err(err(format!("line {n} continues a field but no field came before")));
                };
                value.push('\n');
                value.push_str(line);
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(err(format!("line {n} has no \"Field: value\"")));
            };
            if name.is_empty() || name.starts_with('-') || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(format!("line {n} has an invalid field name {name:?}")));
            }
            if fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(name)) {
                return Err(err(format!("field {name} appears twice")));
            }
            fields.push((name.to_string(), value.trim().to_string()));
        }
        let paragraph = Paragraph { fields };
        paragraph.check()?;
        Ok(paragraph)
    }

    /// A field's value (names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn package(&self) -> &str {
        self.get("Package").unwrap_or_default()
    }

    pub fn version(&self) -> &str {
        self.get("Version").unwrap_or_default()
    }

    pub fn architecture(&self) -> &str {
        self.get("Architecture").unwrap_or_default()
    }

    /// The paragraph as written in a control file (and stored).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.fields {
            let sep = if value.starts_with('\n') || value.is_empty() {
                ""
            } else {
                " "
            };
            let _ = writeln!(out, "{name}:{sep}{value}");
        }
        out
    }

    fn check(&self) -> Result<(), DebError> {
        let err = |m: String| Err(DebError::Control(m));
        for required in ["Package", "Version", "Architecture"] {
            if self.get(required).is_none_or(str::is_empty) {
                return err(format!("it has no {required} field"));
            }
        }
        let package = self.package();
        let package_ok = package.len() >= 2
            && package.len() <= 255
            && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !package_ok {
            return err(format!(
                "Package {:?} is not a package name (lowercase letters, digits, + - .)",
                package.chars().take(64).collect::<String>()
            ));
        }
        let version = self.version();
        let version_ok = version.len() <= 255
            && version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
        if !version_ok {
            return err(format!(
                "Version {:?} is not a Debian version (it starts with a digit; letters, digits, . + ~ : -)",
                version.chars().take(64).collect::<String>()
            ));
        }
        if !is_architecture(self.architecture()) {
            return err(format!(
                "Architecture {:?} is not one architecture name",
                self.architecture().chars().take(64).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// An architecture name as it appears in paths (`binary-<arch>`) and
/// control files: lowercase letters, digits and dashes.
pub fn is_architecture(arch: &str) -> bool {
    !arch.is_empty()
        && arch.len() <= 64
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The fields an index sets itself: a package's own are dropped.
const INDEX_FIELDS: [&str; 6] = ["Filename", "Size", "SHA256", "MD5sum", "SHA1", "SHA512"];

/// One package as an index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry<'a> {
    pub control: &'a Paragraph,
    /// Relative to the repository's root: `pool/…`.
    pub filename: &'a str,
    pub size: u64,
    pub sha256_hex: &'a str,
}

/// The `Packages` index of one architecture: every entry of that
/// architecture or `all`, each once per (package, version, architecture),
/// sorted, so the same set of packages always gives the same bytes.
pub fn packages_index(entries: &[IndexEntry<'_>], arch: &str) -> String {
    let mut chosen: Vec<&IndexEntry<'_>> = entries
        .iter()
        .filter(|e| {
            let a = e.control.architecture();
            a == arch || a == "all"
        })
        .collect();
    chosen.sort_by(|a, b| {
        (
            a.control.package(),
            a.control.version(),
            a.control.architecture(),
            a.filename,
        )
            .cmp(&(
                b.control.package(),
                b.control.version(),
                b.control.architecture(),
                b.filename,
            ))
    });
    chosen.dedup_by(|a, b| {
        (a.control.package(), a.control.version(), a.control.architecture())
            == (b.control.package(), b.control.version(), b.control.architecture())
    });
    let mut out = String::new();
    for e in chosen {
        if !out.is_empty() {
            out.push('\n');
        }
        for (name, value) in &e.control.fields {
            if INDEX_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name)) {
                continue;
            }
            let sep = if value.starts_with('\n') || value.is_empty() {
                ""
            } else {
                " "
            };
            let _ = writeln!(out, "{name}:{sep}{value}");
        }
        let _ = writeln!(out, "Filename: {}", e.filename);
        let _ = writeln!(out, "Size: {}", e.size);
        let _ = writeln!(out, "SHA256: {}", e.sha256_hex);
    }
    out
}

/// The architectures a repository's `Release` names: those of its
/// packages, without `all` (whose packages are listed in each), or `all`
/// alone when every package is `all` or there are none (apt refuses a
/// suite that lists no index at all).
pub fn architectures<'a>(entries: impl IntoIterator<Item = &'a Paragraph>) -> Vec<String> {
    let mut set: BTreeSet<String> = entries
        .into_iter()
        .map(Paragraph::architecture)
        .filter(|a| *a != "all")
        .map(str::to_string)
        .collect();
    if set.is_empty() {
        set.insert("all".to_string());
    }
    set.into_iter().collect()
}

/// One index file a `Release` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    /// Relative to `dists/<suite>/`: `main/binary-amd64/Packages.gz`.
    pub path: String,
    pub size: u64,
    pub sha256_hex: String,
}

/// What a `Release` file says besides its index files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo<'a> {
    pub origin: &'a str,
    pub label: &'a str,
    /// Suite and codename alike: the environment's name.
    pub suite: &'a str,
    pub date: chrono::DateTime<chrono::Utc>,
    pub architectures: &'a [String],
    pub description: &'a str,
}

/// A repository's `Release` file, one component (`main`), by-hash on.
pub fn release_file(info: &ReleaseInfo<'_>, files: &[IndexFile]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Origin: {}", info.origin);
    let _ = writeln!(out, "Label: {}", info.label);
    let _ = writeln!(out, "Suite: {}", info.suite);
    let _ = writeln!(out, "Codename: {}", info.suite);
    let _ = writeln!(out, "Date: {}", info.date.format("%a, %d %b %Y %H:%M:%S UTC"));
    // No line may end in whitespace: the cleartext signature of InRelease
    // is made over lines without it, so gpgv would find it bad.
    out.push_str("Architectures:");
    for a in info.architectures {
        out.push(' ');
        out.push_str(a);
    }
    out.push('\n');
    let _ = writeln!(out, "Components: main");
    let _ = writeln!(out, "Description: {}", info.description);
    let _ = writeln!(out, "Acquire-By-Hash: yes");
    let _ = writeln!(out, "SHA256:");
    let width = files.iter().map(|f| f.size.to_string().len()).max().unwrap_or(1);
    for f in files {
        let _ = writeln!(out, " {} {:>width$} {}", f.sha256_hex, f.size, f.path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            out.extend(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, data.len()).bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn finds_the_control_member() {
        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", b"xyz"),
            ("data.tar.xz", b"d"),
        ]);
        let found = control_member(&deb).unwrap();
        let ControlMember::Found {
            compression,
            start,
            end,
        } = found
        else {
            panic!("{found:?}")
        };
        assert_eq!(compression, Compression::Xz);
        assert_eq!(&deb[start..end], b"xyz");
        // A prefix asks for more, never more than the member's end.
        assert!(matches!(control_member(&deb[..10]), Ok(ControlMember::NeedBytes(_))));
        match control_member(&deb[..start + 1]) {
            Ok(ControlMember::NeedBytes(n)) => assert_eq!(n, end),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_what_is_not_a_deb() {
        assert_eq!(
            control_member(b"hello world, this is not a package at all, not one bit of it, no"),
            Err(DebError::NotAr)
        );
        assert_eq!(control_member(b"PK"), Err(DebError::NotAr));
        let deb = ar(&[("data.tar.xz", b"d")]);
        assert!(matches!(control_member(&deb), Err(DebError::NoDebianBinary(_))));
        let deb = ar(&[("debian-binary", b"3.0\n"), ("control.tar.xz", b"x")]);
        assert!(matches!(control_member(&deb), Err(DebError::BadFormat(_))));
        let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.bz2", b"x")]);
        assert!(matches!(control_member(&deb), Err(DebError::NoControlTar(_))));
        let mut deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar", b"x")]);
        deb[8 + 58] = b'!';
        assert!(matches!(control_member(&deb), Err(DebError::BadMember { .. })));
    }

    const CONTROL: &str = "Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: A <a@example.com>\nDescription: greets\n a longer text\n .\n more\n";

    #[test]
    fn parses_a_control_file() {
        let p = Paragraph::parse(CONTROL).unwrap();
        assert_eq!(
            (p.package(), p.version(), p.architecture()),
            ("hello", "1.0-1", "amd64")
        );
        assert_eq!(p.get("description"), Some("greets\n a longer text\n .\n more"));
        assert_eq!(p.text(), CONTROL);
        assert_eq!(Paragraph::parse(&p.text()).unwrap(), p);
    }

    #[test]
    fn refuses_bad_control_files() {
        for (text, why) in [
            ("Version: 1\nArchitecture: all\n", "no Package"),
            ("Package: Hello\nVersion: 1\nArchitecture: all\n", "not a package name"),
            (
                "Package: hello\nVersion: one\nArchitecture: all\n",
                "not a Debian version",
            ),
            (
                "Package: hello\nVersion: 1\nArchitecture: amd64 i386\n",
                "not one architecture",
            ),
            (
                "Package: hello\nVersion: 1\nArchitecture: ../x\n",
                "not one architecture",
            ),
            (" continued\nPackage: hello\n", "no field came before"),
            ("Package: hello\nPackage: again\n", "twice"),
            (
                "Package: hello\nVersion: 1\nArchitecture: all\n\nPackage: b\n",
                "second paragraph",
            ),
            ("just text\n", "no \"Field: value\""),
        ] {
            let e = Paragraph::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn indexes_are_sorted_per_architecture_with_all_in_each() {
        let amd = Paragraph::parse("Package: beta\nVersion: 1\nArchitecture: amd64\nSHA256: ff\n").unwrap();
        let arm = Paragraph::parse("Package: beta\nVersion: 1\nArchitecture: arm64\n").unwrap();
        let all = Paragraph::parse("Package: alpha\nVersion: 2\nArchitecture: all\n").unwrap();
        let e = |control, filename| IndexEntry {
            control,
            filename,
            size: 3,
            sha256_hex: "ab",
        };
        let entries = [
            e(&amd, "pool/1/b.deb"),
            e(&arm, "pool/1/b-arm.deb"),
            e(&all, "pool/1/a.deb"),
            e(&all, "pool/2/a.deb"),
        ];
        let index = packages_index(&entries, "amd64");
        assert_eq!(
            index,
            "Package: alpha\nVersion: 2\nArchitecture: all\nFilename: pool/1/a.deb\nSize: 3\nSHA256: ab\n\n\
             Package: beta\nVersion: 1\nArchitecture: amd64\nFilename: pool/1/b.deb\nSize: 3\nSHA256: ab\n"
        );
        assert_eq!(architectures([&amd, &arm, &all]), ["amd64", "arm64"]);
        assert_eq!(architectures([&all]), ["all"]);
        assert_eq!(architectures([]), ["all"]);
    }

    #[test]
    fn release_lists_files_with_their_hashes() {
        let date = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let archs = ["amd64".to_string()];
        let text = release_file(
            &ReleaseInfo {
                origin: "Tugboat",
                label: "api",
                suite: "production",
                date,
                architectures: &archs,
                description: "api production",
            },
            &[IndexFile {
                path: "main/binary-amd64/Packages".into(),
                size: 12,
                sha256_hex: "ab".into(),
            }],
        );
        assert!(text.contains("Suite: production\nCodename: production\nDate: Fri, 02 Jan 2026 03:04:05 UTC\n"));
        assert!(text.contains("Acquire-By-Hash: yes\nSHA256:\n ab 12 main/binary-amd64/Packages\n"));
        let empty = release_file(
            &ReleaseInfo {
                architectures: &[],
                origin: "Tugboat",
                label: "api",
                suite: "production",
                date,
                description: "api production",
            },
            &[],
        );
        assert!(empty.lines().all(|l| l == l.trim_end()), "{empty:?}");
    }
}
