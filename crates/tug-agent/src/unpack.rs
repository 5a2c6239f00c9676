//! Unpacking tarball artifacts into a release being assembled.
//!
//! An artifact of kind `tarball` named `*.tar`, `*.tar.gz`, `*.tgz`,
//! `*.tar.zst` or `*.tzst` is replaced in the release by its contents,
//! unpacked into the directory the archive itself would have been placed
//! in: `app.tar.gz` into the release root, `linux-amd64/app.tar.gz` into
//! `linux-amd64/`. Archives are unpacked after the plain files, in name
//! order. A file may come from one place only: an entry that would replace
//! a plain artifact or another archive's file makes the release fail
//! (directories may be shared).
//!
//! An archive is untrusted input, and the release directory is all it may
//! touch. Refused, failing the whole release: entries with an absolute
//! path or a `..` component; symbolic links whose target is absolute or
//! leads outside the release (checked once everything is unpacked, by
//! resolving each link through the links it passes, so no chain of
//! individually harmless links escapes either); hard links to anything but
//! a regular file the same archive unpacked; device files, fifos and other
//! special entries; and any write through a symbolic link (an earlier
//! entry `lib -> /etc` followed by `lib/passwd`), which is checked for
//! every component of every path. Modes come from the entry headers
//! without setuid, setgid, sticky or group/world write bits; owners are
//! not applied. Nothing here follows a link when it writes.
//!
//! Errors about the archive's content are [`Error::Archive`]: the build is
//! broken and the agent gives up on it. Errors writing the release (a full
//! disk) are I/O errors, retried like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use tug_api::ChannelArtifact;
use tug_core::{ArtifactKind, ArtifactName};

use crate::error::{io, Error, Result};

/// How a tarball artifact's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How many symbolic links one path may pass through before it is taken
/// to be a loop (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

/// The compression of an artifact the agent unpacks, or `None` for one it
/// places as a file: not a tarball, or a format it does not unpack (a
/// `.zip`, a `.tar.xz`).
pub fn format(a: &ChannelArtifact) -> Option<Compression> {
    if a.kind != ArtifactKind::Tarball {
        return None;
    }
    let name = a.name.as_str().to_ascii_lowercase();
    if name.ends_with(".tar") {
        Some(Compression::None)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(Compression::Gzip)
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// What is in a release being assembled, so that archives cannot replace
/// each other's files or escape it.
pub struct Release<'a> {
    root: &'a Path,
    /// Every file (not directory) placed so far, relative to the root,
    /// with the artifact it came from.
    files: BTreeMap<PathBuf, String>,
    /// The symbolic links archives created, relative to the root, with
    /// the archive each came from.
    links: Vec<(PathBuf, ArtifactName)>,
    /// Whether any archive was unpacked.
    unpacked: bool,
}

impl<'a> Release<'a> {
    pub fn new(root: &'a Path) -> Release<'a> {
        Release {
            root,
            files: BTreeMap::new(),
            links: Vec::new(),
            unpacked: false,
        }
    }

    /// Records a plain artifact placed at `name`.
    pub fn placed(&mut self, name: &ArtifactName) {
        self.files.insert(PathBuf::from(name.as_str()), name.to_string());
    }

    /// Unpacks the archive `src` (the cached blob of `artifact`) into the
    /// directory the artifact would have been placed in.
    pub fn unpack(&mut self, src: &Path, artifact: &ArtifactName, compression: Compression) -> Result<()> {
        let refuse = |why: String| Error::Archive {
            artifact: artifact.clone(),
            why,
        };
        self.unpacked = true;
        let into = Path::new(artifact.as_str())
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        self.make_dirs(&into, artifact)?;
        let file = std::fs::File::open(src).map_err(io(src))?;
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(BufReader::new(file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
            Compression::Zstd => Box::new(ZstdFrames::new(BufReader::new(file)).map_err(|e| refuse(e.to_string()))?),
        };
        let mut archive = tar::Archive::new(reader);
        // This archive's regular files, which its hard links may name.
        let mut own_files = BTreeSet::new();
        let entries = archive.entries().map_err(|e| refuse(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| refuse(format!("unreadable entry: {e}")))?;
            let raw = entry.path().map_err(|e| refuse(e.to_string()))?.into_owned();
            let Some(path) = archive_path(&raw).map_err(refuse)? else {
                continue; // `.` or `./`: the directory unpacked into
            };
            let rel = into.join(&path);
            let shown = raw.display().to_string();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Directory => {
                    self.make_dirs(&rel, artifact)?;
                    let dir = self.root.join(&rel);
                    set_mode(&dir, (mode & 0o755) | 0o700)?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let target = self.new_file(&rel, artifact, &shown)?;
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&target)
                        .map_err(|e| self.create_error(e, &target, artifact, &shown))?;
                    copy(&mut entry, &mut out, &target).map_err(|e| match e {
                        Copy::Read(e) => refuse(format!("{shown}: {e}")),
                        Copy::Write(e) => e,
                    })?;
                    set_mode(&target, (mode & 0o755) | 0o400)?;
                    own_files.insert(rel);
                }
                tar::EntryType::Symlink => {
                    let to = link_target(&entry, "symbolic link", &shown).map_err(refuse)?;
                    check_link_target(&rel, &to)
                        .map_err(|why| refuse(format!("symbolic link {shown} -> {}: {why}", to.display())))?;
                    let target = self.new_file(&rel, artifact, &shown)?;
                    std::os::unix::fs::symlink(&to, &target)
                        .map_err(|e| self.create_error(e, &target, artifact, &shown))?;
                    self.links.push((rel, artifact.clone()));
                }
                tar::EntryType::Link => {
                    let to = link_target(&entry, "hard link", &shown).map_err(refuse)?;
                    let named = archive_path(&to)
                        .map_err(|why| refuse(format!("hard link {shown} -> {}: {why}", to.display())))?
                        .map(|p| into.join(p));
                    let Some(existing) = named.filter(|p| own_files.contains(p)) else {
                        return Err(refuse(format!(
                            "hard link {shown} -> {} does not name a regular file unpacked before it from this archive",
                            to.display()
                        )));
                    };
                    // The target's own directories were checked when it was
                    // written, and nothing replaces a file once written.
                    let from = self.root.join(&existing);
                    let target = self.new_file(&rel, artifact, &shown)?;
                    std::fs::hard_link(&from, &target).map_err(|e| self.create_error(e, &target, artifact, &shown))?;
                    own_files.insert(rel);
                }
                // Metadata for the entries around it, applied by `tar`.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(refuse(format!(
                        "{shown} is a {}; a release holds only files, directories and links",
                        describe(other)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Checks, once everything is unpacked, that every symbolic link an
    /// archive made resolves inside the release, following the links it
    /// passes through (the check at unpacking time cannot see links made
    /// after it).
    pub fn check_links(&self) -> Result<()> {
        for (link, artifact) in &self.links {
            if let Err(why) = resolve_inside(self.root, link) {
                return Err(Error::Archive {
                    artifact: artifact.clone(),
                    why: format!("symbolic link {}: {why}", link.display()),
                });
            }
        }
        Ok(())
    }

    /// Whether any archive was unpacked: its files were written here,
    /// not linked from the cache, and must reach the disk before the
    /// release is named complete.
    pub fn unpacked(&self) -> bool {
        self.unpacked
    }

    /// Creates the directories of `rel` (relative to the root) that are
    /// missing; an existing component must be a real directory, never a
    /// link or a file.
    fn make_dirs(&self, rel: &Path, artifact: &ArtifactName) -> Result<()> {
        let mut at = self.root.to_path_buf();
        for part in rel.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "a symbolic link: nothing is written through one"
                    } else {
                        "a file"
                    };
                    return Err(Error::Archive {
                        artifact: artifact.clone(),
                        why: format!("{} is {what}", relative(self.root, &at).display()),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&at).map_err(io(&at))?;
                }
                Err(e) => return Err(io(&at)(e)),
            }
        }
        Ok(())
    }

    /// Makes the directories above a new file at `rel` and claims `rel`
    /// for `artifact`; returns where to create it.
    fn new_file(&mut self, rel: &Path, artifact: &ArtifactName, shown: &str) -> Result<PathBuf> {
        if let Some(from) = self.files.get(rel) {
            return Err(Error::Archive {
                artifact: artifact.clone(),
                why: format!("{shown} would replace {} from {from}", rel.display()),
            });
        }
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent, artifact)?;
        }
        self.files.insert(rel.to_path_buf(), artifact.to_string());
        Ok(self.root.join(rel))
    }

    /// A failed create: something is already there (a directory the
    /// archive made, say) is the archive's fault; anything else is I/O.
    fn create_error(&self, e: std::io::Error, at: &Path, artifact: &ArtifactName, shown: &str) -> Error {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Archive {
                artifact: artifact.clone(),
                why: format!("{shown} would replace {}", relative(self.root, at).display()),
            }
        } else {
            io(at)(e)
        }
    }
}

/// An entry's path as a relative path without `.` components, or `None`
/// for the archive's own top directory; refused when absolute or with
/// `..`.
fn archive_path(raw: &Path) -> std::result::Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("{} has a .. component", raw.display()));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is an absolute path", raw.display()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The quick check of a symbolic link's target when it is unpacked:
/// relative, and not above the release root by its own `..`s.
fn check_link_target(link: &Path, target: &Path) -> std::result::Result<(), String> {
    if target.has_root() {
        return Err("the target is an absolute path".into());
    }
    let mut depth = link.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or("the target leads outside the release")?;
            }
            Component::RootDir | Component::Prefix(_) => return Err("the target is an absolute path".into()),
        }
    }
    Ok(())
}

/// Resolves the link `link` (relative to `root`) as the kernel would,
/// through every link on the way, and fails if any step leaves `root`.
/// A target that does not exist ends the walk (a dangling link points at
/// nothing, which is inside).
fn resolve_inside(root: &Path, link: &Path) -> std::result::Result<(), String> {
    // Where the walk is, as components below the root, and what is left.
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut todo: Vec<std::ffi::OsString> = link.components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match Path::new(&part).components().next() {
            Some(Component::ParentDir) => {
                at.pop().ok_or("it leads outside the release")?;
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(Component::RootDir | Component::Prefix(_)) => return Err("it leads to an absolute path".into()),
            Some(Component::Normal(_)) => {}
        }
        at.push(part);
        let here: PathBuf = root.join(at.iter().collect::<PathBuf>());
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            // Nothing there: the rest of the path names nothing either.
            return Ok(());
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err("it passes through too many links (a loop?)".into());
            }
            let target = std::fs::read_link(&here).map_err(|e| e.to_string())?;
            if target.has_root() {
                return Err(format!(
                    "it passes through {}, which leads to an absolute path",
                    relative(root, &here).display()
                ));
            }
            at.pop();
            todo.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
        }
    }
    Ok(())
}

/// What a link entry points at.
fn link_target<R: Read>(entry: &tar::Entry<R>, what: &str, shown: &str) -> std::result::Result<PathBuf, String> {
    match entry.link_name() {
        Ok(Some(to)) => Ok(to.into_owned()),
        Ok(None) => Err(format!("{what} {shown} has no target")),
        Err(e) => Err(format!("{what} {shown}: {e}")),
    }
}

fn relative<'p>(root: &Path, p: &'p Path) -> &'p Path {
    p.strip_prefix(root).unwrap_or(p)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Which side of a copy failed.
enum Copy {
    /// The archive: its content is broken.
    Read(std::io::Error),
    /// The release: an I/O error (a full disk, say).
    Write(Error),
}

fn copy(from: &mut impl Read, to: &mut std::fs::File, path: &Path) -> std::result::Result<(), Copy> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(|e| Copy::Write(io(path)(e)))?;
    }
}

/// A zstd stream of one or more frames (`zstd` writes one; parallel
/// compressors write several, one after another).
struct ZstdFrames<R: BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> std::io::Result<ZstdFrames<R>> {
        let decoder = ruzstd::decoding::StreamingDecoder::new(source).map_err(std::io::Error::other)?;
        Ok(ZstdFrames { decoder: Some(decoder) })
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done: another may follow.
            let (mut source, frames) = self
                .decoder
                .take()
                .map(|d| d.into_parts())
                .ok_or_else(|| std::io::Error::other("no decoder"))?;
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder = Some(
                ruzstd::decoding::StreamingDecoder::new_with_decoder(source, frames).map_err(std::io::Error::other)?,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_relative_without_dot_dot() {
        let ok = |p: &str| archive_path(Path::new(p)).unwrap();
        assert_eq!(ok("./bin/tool"), Some(PathBuf::from("bin/tool")));
        assert_eq!(ok("a/./b/"), Some(PathBuf::from("a/b")));
        assert_eq!(ok("./"), None);
        assert!(archive_path(Path::new("/etc/passwd")).unwrap_err().contains("absolute"));
        assert!(archive_path(Path::new("a/../../b")).unwrap_err().contains(".."));
        assert!(archive_path(Path::new("a/..")).is_err());
    }

    #[test]
    fn link_targets_stay_below_the_root_by_their_own_dot_dots() {
        let check = |link: &str, to: &str| check_link_target(Path::new(link), Path::new(to));
        assert!(check("conf", "etc/app.conf").is_ok());
        assert!(check("bin/up", "../etc").is_ok());
        assert!(check("a/b/c", "../../x").is_ok());
        assert!(check("a/b/c", "../../../x").is_err());
        assert!(check("up", "..").is_err());
        assert!(check("abs", "/etc").is_err());
    }

    #[test]
    fn links_are_resolved_through_the_links_they_pass() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/real")).unwrap();
        let link = |at: &str, to: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        link("d/up", "..");
        link("inside", "d/up/d/real");
        link("outside", "d/up/..");
        link("dangling", "d/nothing/../../..");
        link("loop1", "loop2");
        link("loop2", "loop1");
        link("via-abs", "abs/x");
        link("abs", "/etc");
        assert_eq!(resolve_inside(root, Path::new("d/up")), Ok(()));
        assert_eq!(resolve_inside(root, Path::new("inside")), Ok(()));
        assert!(resolve_inside(root, Path::new("outside"))
            .unwrap_err()
            .contains("outside"));
        // Nothing is at d/nothing: the rest of the path names nothing.
        assert_eq!(resolve_inside(root, Path::new("dangling")), Ok(()));
        assert!(resolve_inside(root, Path::new("loop1")).unwrap_err().contains("loop"));
        assert!(resolve_inside(root, Path::new("via-abs"))
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn zstd_streams_of_several_frames_are_read_whole() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let mut both = compress_to_vec(&b"first frame, "[..], CompressionLevel::Fastest);
        both.extend(compress_to_vec(&b"second frame"[..], CompressionLevel::Fastest));
        let mut text = String::new();
        ZstdFrames::new(&both[..]).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "first frame, second frame");
    }

    #[test]
    fn only_tarballs_with_known_compressions_are_unpacked() {
        let a = |name: &str, kind| ChannelArtifact {
            name: ArtifactName::parse(name).unwrap(),
            kind,
            platform: None,
            digest: tug_core::Digest::of(b""),
            size: 0,
            url: String::new(),
            executable: false,
        };
        assert_eq!(format(&a("x.tar", ArtifactKind::Tarball)), Some(Compression::None));
        assert_eq!(format(&a("x.TGZ", ArtifactKind::Tarball)), Some(Compression::Gzip));
        assert_eq!(
            format(&a("d/x.tar.zst", ArtifactKind::Tarball)),
            Some(Compression::Zstd)
        );
        assert_eq!(format(&a("x.zip", ArtifactKind::Tarball)), None);
        assert_eq!(format(&a("x.tar.xz", ArtifactKind::Tarball)), None);
        assert_eq!(format(&a("x.tar.gz", ArtifactKind::Other)), None);
    }
}
