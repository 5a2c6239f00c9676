//! The local content-addressed cache, `cache/sha256/<hex>`, shared by all
//! releases. A blob takes its name only after its digest is verified
//! (`tug_client::Client::fetch_blob` downloads into `<hex>.part`, resumes
//! with `Range`, hashes and renames), so a name in the cache is a promise
//! about its bytes. Releases hard-link these files, so deleting a cache
//! entry never breaks an installed release.
//!
//! Which blobs a release needs is not known here: the caller passes the set
//! to keep to [`Cache::gc`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tug_api::ChannelArtifact;
use tug_client::Client;
use tug_core::Digest;

use crate::error::{io, Error, Result};

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache under the agent directory `root`, created if missing.
    pub fn open(root: &Path) -> Result<Cache> {
        let dir = root.join("cache").join("sha256");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Cache { dir })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    fn part_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.part", digest.hex()))
    }

    /// Makes sure the cache holds `digest`, downloading it if it is missing
    /// or if the cached bytes no longer hash to it (the client re-hashes an
    /// existing file before trusting it). Returns the bytes downloaded. A
    /// digest mismatch leaves nothing under the blob's name. A download
    /// that ran out of space drops its partial file: kept for a resume, it
    /// would hold the disk full.
    pub async fn ensure(&self, client: &Client, digest: &Digest, size: u64) -> Result<u64> {
        match client.fetch_blob(digest, size, &self.path(digest)).await {
            Ok(n) => Ok(n),
            Err(source) => {
                if is_out_of_space(&source) {
                    let part = self.part_path(digest);
                    if let Err(e) = std::fs::remove_file(&part) {
                        tracing::warn!(path = %part.display(), error = %e, "cannot remove a partial download");
                    }
                }
                Err(Error::Fetch {
                    digest: *digest,
                    source,
                })
            }
        }
    }

    /// How many bytes downloading `artifacts` would add to the cache: the
    /// blobs not cached yet, less what partial downloads of them hold.
    pub fn missing_bytes(&self, artifacts: &[ChannelArtifact]) -> u64 {
        let mut seen = HashSet::new();
        artifacts
            .iter()
            .filter(|a| seen.insert(a.digest) && !self.path(&a.digest).exists())
            .map(|a| {
                let have = std::fs::metadata(self.part_path(&a.digest)).map_or(0, |m| m.len());
                a.size.saturating_sub(have)
            })
            .sum()
    }

    /// The space the agent may still use on the cache's file system.
    pub fn available_bytes(&self) -> Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| Error::Io {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        // Both are u64 on 64-bit Linux but narrower elsewhere.
        #[allow(clippy::useless_conversion)]
        let (blocks, size) = (u64::from(s.blocks_available()), u64::from(s.fragment_size()));
        Ok(blocks.saturating_mul(size))
    }

    /// Removes partial downloads last written before `older_than`: those
    /// of an earlier process, which a crash cut off.
    pub fn clean_parts(&self, older_than: SystemTime) -> Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "part") {
                let modified = entry.metadata().and_then(|m| m.modified()).map_err(io(&path))?;
                if modified < older_than {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Deletes every complete blob not in `keep`. Partial downloads are
    /// left alone (they may be resumed).
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Only names that are digests are blobs; anything else (a part
            // file, a stray) is not ours to judge here.
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if !keep.contains(&digest) {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Whether a download failed because the disk (or the quota) is full.
fn is_out_of_space(e: &tug_client::Error) -> bool {
    let tug_client::Error::Io { source, .. } = e else {
        return false;
    };
    let code = source.raw_os_error();
    code == Some(nix::errno::Errno::ENOSPC as i32) || code == Some(nix::errno::Errno::EDQUOT as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_what_is_asked_and_parts() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        std::fs::write(cache.path(&a), b"a").unwrap();
        std::fs::write(cache.path(&b), b"b").unwrap();
        let part = PathBuf::from(format!("{}.part", cache.path(&b).display()));
        std::fs::write(&part, b"").unwrap();
        assert_eq!(cache.gc(&HashSet::from([a])).unwrap(), 1);
        assert!(cache.path(&a).exists());
        assert!(!cache.path(&b).exists());
        assert!(part.exists());
    }

    #[test]
    fn clean_parts_removes_only_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let part = PathBuf::from(format!("{}.part", cache.path(&Digest::of(b"x")).display()));
        std::fs::write(&part, b"xx").unwrap();
        assert_eq!(cache.clean_parts(SystemTime::UNIX_EPOCH).unwrap(), 0);
        assert!(part.exists());
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        assert_eq!(cache.clean_parts(later).unwrap(), 1);
        assert!(!part.exists());
    }
}
