//! Releases on disk: assembling one from cached blobs, switching `current`
//! to it, pruning old ones, and cleaning what a crash left behind.
//!
//! A release is assembled in `releases/<build>.tmp/` (plain artifacts
//! linked or copied from the cache, then tarball artifacts unpacked, see
//! `unpack`), fsynced, and renamed to `releases/<build>/`: a directory
//! without `.tmp` is always complete, and a refused archive leaves nothing.
//! `current` is a relative symlink (`releases/<build>`) replaced by renaming
//! `current.new` over it, so at every instant, including after `kill -9`, it
//! names a complete release or does not exist. Each release's artifact list
//! is kept in `manifests/<build>.json` (outside the release, which belongs
//! to the application) so the cache knows which blobs are still needed.
//!
//! Everything here is blocking file-system work; the agent runs it on a
//! blocking thread. Nothing here talks to the server.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tug_api::ChannelArtifact;
use tug_core::{file_mode, BuildId, Digest, Version};

use crate::cache::Cache;
use crate::error::{io, Error, Result};
use crate::state::{sync_dir, write_atomic, State};
use crate::unpack;

const TMP_SUFFIX: &str = ".tmp";

/// `manifests/<build>.json`: what a release was assembled from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReleaseManifest {
    build: BuildId,
    version: Option<Version>,
    artifacts: Vec<ChannelArtifact>,
}

#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

impl Releases {
    /// The releases under the agent directory `root`, created if missing.
    pub fn open(root: &Path) -> Result<Releases> {
        let r = Releases {
            root: root.to_path_buf(),
        };
        for dir in [r.releases_dir(), r.manifests_dir()] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(r)
    }

    fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn manifest_path(&self, build: &BuildId) -> PathBuf {
        self.manifests_dir().join(format!("{build}.json"))
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The directory of a complete release.
    pub fn dir(&self, build: &BuildId) -> PathBuf {
        self.releases_dir().join(build.as_str())
    }

    /// Whether a complete release of `build` is on disk.
    pub fn exists(&self, build: &BuildId) -> bool {
        self.dir(build).is_dir()
    }

    /// The build `current` points at, if any.
    pub fn current(&self) -> Result<Option<BuildId>> {
        let link = self.current_link();
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&link)(e)),
        };
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        match BuildId::parse(name) {
            Ok(b) => Ok(Some(b)),
            Err(_) => Err(Error::State {
                path: link,
                message: format!("points at {}, which is not a release", target.display()),
            }),
        }
    }

    /// Assembles the release of `build` from the cache (every blob must be
    /// there) and returns its directory. A release already complete on disk
    /// is reused as it is.
    pub fn assemble(
        &self,
        build: &BuildId,
        version: Option<&Version>,
        artifacts: &[ChannelArtifact],
        cache: &Cache,
    ) -> Result<PathBuf> {
        let dest = self.dir(build);
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.releases_dir().join(format!("{build}{TMP_SUFFIX}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        match self.fill(&tmp, build, version, artifacts, cache) {
            Ok(()) => Ok(dest),
            Err(e) => {
                // Typically a full disk: what was placed would hold space
                // (and inodes) the running release may need.
                if let Err(clean) = std::fs::remove_dir_all(&tmp) {
                    tracing::warn!(path = %tmp.display(), error = %clean, "cannot remove a half-assembled release");
                }
                if !dest.is_dir() {
                    let _ = std::fs::remove_file(self.manifest_path(build));
                }
                Err(e)
            }
        }
    }

    /// Places the artifacts in `tmp`, writes the manifest and renames `tmp`
    /// to the release's directory.
    fn fill(
        &self,
        tmp: &Path,
        build: &BuildId,
        version: Option<&Version>,
        artifacts: &[ChannelArtifact],
        cache: &Cache,
    ) -> Result<()> {
        let tmp = tmp.to_path_buf();
        let dest = self.dir(build);
        let mut dirs: HashSet<PathBuf> = HashSet::from([tmp.clone()]);
        let (archives, files): (Vec<_>, Vec<_>) = artifacts.iter().partition(|a| unpack::format(a).is_some());
        let mut release = unpack::Release::new(&tmp);
        for a in files {
            // ArtifactName is a validated relative path without `..` or
            // `.` segments, so the join stays inside the release.
            let path = tmp.join(a.name.as_str());
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                let mut p = parent.to_path_buf();
                while p.starts_with(&tmp) && dirs.insert(p.clone()) {
                    if !p.pop() {
                        break;
                    }
                }
            }
            place(&cache.path(&a.digest), &path, file_mode(a.kind, a.executable))?;
            release.placed(&a.name);
        }
        let mut archives = archives;
        archives.sort_by(|a, b| a.name.cmp(&b.name));
        for a in archives {
            if let Some(compression) = unpack::format(a) {
                release.unpack(&cache.path(&a.digest), &a.name, compression)?;
            }
        }
        release.check_links()?;
        if release.unpacked() {
            // Unpacked files were written here, not linked from the
            // verified cache: flush them (and every directory) with one
            // call rather than one per file.
            let dir = std::fs::File::open(&tmp).map_err(io(&tmp))?;
            nix::unistd::syncfs(&dir).map_err(|e| io(&tmp)(e.into()))?;
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        // The manifest first: a release directory without one would keep
        // its blobs from nothing, but one with a manifest and no directory
        // is just pruned.
        let manifest = ReleaseManifest {
            build: build.clone(),
            version: version.cloned(),
            artifacts: artifacts.to_vec(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::State {
            path: self.manifest_path(build),
            message: e.to_string(),
        })?;
        write_atomic(&self.manifest_path(build), &json)?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(&self.releases_dir())
    }

    /// Points `current` at `build` (or removes it) atomically: a new
    /// symlink is made beside it and renamed over it.
    pub fn switch(&self, build: Option<&BuildId>) -> Result<()> {
        let link = self.current_link();
        match build {
            Some(b) => {
                let new = self.root.join("current.new");
                match std::fs::remove_file(&new) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&new)(e)),
                }
                // Relative, so the directory can be moved or mounted
                // elsewhere without breaking the link.
                std::os::unix::fs::symlink(Path::new("releases").join(b.as_str()), &new).map_err(io(&new))?;
                std::fs::rename(&new, &link).map_err(io(&link))?;
            }
            None => match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&link)(e)),
            },
        }
        sync_dir(&self.root)
    }

    /// Removes what an interrupted run left: half-assembled releases and a
    /// half-made `current.new`. Only one agent runs on a directory (it
    /// holds the lock), so none of these is in use.
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut removed = 0;
        let dir = self.releases_dir();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(TMP_SUFFIX)) {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        let new = self.root.join("current.new");
        if std::fs::symlink_metadata(&new).is_ok() {
            std::fs::remove_file(&new).map_err(io(&new))?;
        }
        Ok(removed)
    }

    /// Deletes releases beyond the newest `keep` of the install history,
    /// never the current or the previous one (nor one being activated), and
    /// their manifests. Returns the builds removed.
    pub fn prune(&self, keep: usize, state: &State, current: Option<&BuildId>) -> Result<Vec<BuildId>> {
        let mut kept: HashSet<&BuildId> = state.history.iter().rev().take(keep).collect();
        kept.extend(current);
        kept.extend(state.previous.as_ref());
        kept.extend(state.activating.as_ref());
        let mut removed = Vec::new();
        let dir = self.releases_dir();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let Some(build) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| BuildId::parse(n).ok())
            else {
                continue;
            };
            if kept.contains(&build) {
                continue;
            }
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
            removed.push(build);
        }
        // Manifests of releases no longer on disk, whatever removed them.
        let mdir = self.manifests_dir();
        for entry in std::fs::read_dir(&mdir).map_err(io(&mdir))? {
            let path = entry.map_err(io(&mdir))?.path();
            let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
            let on_disk = BuildId::parse(stem).is_ok_and(|b| self.exists(&b));
            if !on_disk {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(removed)
    }

    fn read_manifest(path: &Path) -> Result<ReleaseManifest> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The version a release was built as, if it was known when assembled.
    pub fn version(&self, build: &BuildId) -> Option<Version> {
        Self::read_manifest(&self.manifest_path(build)).ok()?.version
    }

    /// The blobs the releases on disk were assembled from.
    pub fn used_digests(&self) -> Result<HashSet<Digest>> {
        let mut used = HashSet::new();
        let mdir = self.manifests_dir();
        for entry in std::fs::read_dir(&mdir).map_err(io(&mdir))? {
            let path = entry.map_err(io(&mdir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            used.extend(Self::read_manifest(&path)?.artifacts.iter().map(|a| a.digest));
        }
        Ok(used)
    }
}

/// Puts the cached blob `src` at `dest` with `mode`: a hard link when the
/// blob's mode can be set without changing another release's file (the
/// link shares the inode), a copy otherwise or across file systems.
fn place(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(src).map_err(io(src))?;
    let same_mode = meta.mode() & 0o777 == mode;
    // nlink 1: only the cache holds the inode, so its mode is ours to set.
    let linked = (same_mode || meta.nlink() == 1) && std::fs::hard_link(src, dest).is_ok();
    if !linked {
        std::fs::copy(src, dest).map_err(io(dest))?;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).map_err(io(dest))?;
    if !linked {
        std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(io(dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_core::{ArtifactKind, ArtifactName};

    fn artifact(name: &str, kind: ArtifactKind, bytes: &[u8], cache: &Cache) -> ChannelArtifact {
        let digest = Digest::of(bytes);
        std::fs::write(cache.path(&digest), bytes).unwrap();
        ChannelArtifact {
            name: ArtifactName::parse(name).unwrap(),
            kind,
            platform: None,
            digest,
            size: bytes.len() as u64,
            url: format!("/v1/blobs/{digest}"),
            executable: false,
        }
    }

    fn id(n: u8) -> BuildId {
        BuildId::parse(&format!("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f{n:02x}")).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn assemble_links_sets_modes_and_switches() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rel = Releases::open(dir.path()).unwrap();
        let arts = vec![
            artifact("bin/app", ArtifactKind::Binary, b"#!/bin/sh\n", &cache),
            artifact("etc/app.conf", ArtifactKind::Other, b"x=1\n", &cache),
            // The same bytes as a binary and as data: the second must not
            // change the first's mode through a shared inode.
            artifact("data/copy", ArtifactKind::Other, b"#!/bin/sh\n", &cache),
            // Pushed with its executable bit: the same bytes as the
            // configuration file, and a mode of its own.
            ChannelArtifact {
                executable: true,
                ..artifact("bin/tool", ArtifactKind::Other, b"x=1\n", &cache)
            },
        ];
        let b = id(1);
        let path = rel
            .assemble(&b, Some(&Version::parse("1.2.3").unwrap()), &arts, &cache)
            .unwrap();
        assert_eq!(path, dir.path().join("releases").join(b.as_str()));
        assert_eq!(mode(&path.join("bin/app")), 0o755);
        assert_eq!(mode(&path.join("etc/app.conf")), 0o644);
        assert_eq!(mode(&path.join("data/copy")), 0o644);
        assert_eq!(mode(&path.join("bin/tool")), 0o755);
        assert_eq!(std::fs::read(path.join("data/copy")).unwrap(), b"#!/bin/sh\n");
        assert!(!dir.path().join("releases").join(format!("{b}.tmp")).exists());
        assert_eq!(rel.version(&b).unwrap().to_string(), "1.2.3");
        assert_eq!(rel.current().unwrap(), None);
        rel.switch(Some(&b)).unwrap();
        assert_eq!(rel.current().unwrap(), Some(b.clone()));
        assert_eq!(
            std::fs::read(dir.path().join("current/etc/app.conf")).unwrap(),
            b"x=1\n"
        );
        assert_eq!(
            rel.used_digests().unwrap(),
            arts.iter().map(|a| a.digest).collect::<HashSet<_>>()
        );
        rel.switch(None).unwrap();
        assert_eq!(rel.current().unwrap(), None);
    }

    #[test]
    fn switch_replaces_current_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rel = Releases::open(dir.path()).unwrap();
        let a = vec![artifact("v", ArtifactKind::Other, b"1", &cache)];
        let b = vec![artifact("v", ArtifactKind::Other, b"2", &cache)];
        rel.assemble(&id(1), None, &a, &cache).unwrap();
        rel.assemble(&id(2), None, &b, &cache).unwrap();
        rel.switch(Some(&id(1))).unwrap();
        // A stale current.new from a crash does not stop the next switch.
        std::os::unix::fs::symlink("releases/nowhere", dir.path().join("current.new")).unwrap();
        rel.switch(Some(&id(2))).unwrap();
        assert_eq!(std::fs::read(dir.path().join("current/v")).unwrap(), b"2");
        assert!(std::fs::symlink_metadata(dir.path().join("current.new")).is_err());
    }

    #[test]
    fn crash_leftovers_are_cleaned_and_never_current() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rel = Releases::open(dir.path()).unwrap();
        let a = vec![artifact("v", ArtifactKind::Other, b"1", &cache)];
        rel.assemble(&id(1), None, &a, &cache).unwrap();
        rel.switch(Some(&id(1))).unwrap();
        // What kill -9 between assembly and rename leaves.
        let tmp = dir.path().join("releases").join(format!("{}.tmp", id(2)));
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        std::fs::write(tmp.join("sub/half"), b"h").unwrap();
        std::os::unix::fs::symlink(format!("releases/{}.tmp", id(2)), dir.path().join("current.new")).unwrap();
        assert_eq!(rel.clean_tmp().unwrap(), 1);
        assert!(!tmp.exists());
        assert!(std::fs::symlink_metadata(dir.path().join("current.new")).is_err());
        assert_eq!(rel.current().unwrap(), Some(id(1)));
        // Assembling the interrupted build again starts from scratch.
        let b = vec![artifact("v", ArtifactKind::Other, b"2", &cache)];
        let p = rel.assemble(&id(2), None, &b, &cache).unwrap();
        assert!(!p.join("sub").exists());
    }

    #[test]
    fn a_failed_assembly_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rel = Releases::open(dir.path()).unwrap();
        let mut arts = vec![artifact("a/v", ArtifactKind::Other, b"1", &cache)];
        // The second blob is not in the cache: placing it fails halfway.
        let missing = artifact("b/w", ArtifactKind::Other, b"2", &cache);
        std::fs::remove_file(cache.path(&missing.digest)).unwrap();
        arts.push(missing);
        assert!(rel.assemble(&id(1), None, &arts, &cache).is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("releases")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("manifests")).unwrap().count(), 0);
    }

    #[test]
    fn prune_keeps_newest_current_and_previous() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rel = Releases::open(dir.path()).unwrap();
        let mut state = State::default();
        for n in 1..=6 {
            let a = vec![artifact("v", ArtifactKind::Other, &[n], &cache)];
            rel.assemble(&id(n), None, &a, &cache).unwrap();
            state.record_install(&id(n));
        }
        // Current is an old build (rolled back to), previous another old one.
        state.previous = Some(id(2));
        let removed = rel.prune(3, &state, Some(&id(1))).unwrap();
        let mut removed: Vec<String> = removed.iter().map(|b| b.to_string()).collect();
        removed.sort();
        assert_eq!(removed, vec![id(3).to_string()]);
        for n in [1, 2, 4, 5, 6] {
            assert!(rel.exists(&id(n)), "release {n} was removed");
        }
        assert!(!dir.path().join("manifests").join(format!("{}.json", id(3))).exists());
        // Only the kept releases' blobs are still needed.
        let used = rel.used_digests().unwrap();
        assert_eq!(used.len(), 5);
        assert_eq!(cache.gc(&used).unwrap(), 1);
        assert!(!cache.path(&Digest::of(&[3])).exists());
    }
}
