//! Registry writes: blob uploads (monolithic, or a session of chunks
//! staged in a file and hashed as they arrive), cross-repository mounts,
//! manifests (checked, stored as blobs, registered as a draft build's
//! `oci` artifact when pushed to its `build-<id>` tag), and deletes.
//!
//! An upload session's bytes live in a file under the upload directory of
//! the server that started it, and the running hash in that server's
//! memory: the chunks of one session must reach the same server (a load
//! balancer with affinity), though the session itself is in the database.
//! A server that finishes a session whose hash it does not hold (it
//! restarted) hashes the file again.

use std::path::PathBuf;

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tug_core::oci::{
    config_platform, parse_manifest, ManifestKind, OciCode, Reference, RepoAction, Repository, MAX_MANIFEST,
};
use tug_db::{ManifestPlacement, OciManifestRow};

use super::{oci, tag_of, Visitor};
use crate::*;

/// A manifest once stored.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Where an upload session stands after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Accepted; the session holds this many bytes.
    Accepted(u64),
    /// Refused: the chunk did not start where the session ends (this many
    /// bytes).
    OutOfOrder(u64),
}

impl Tugboat {
    fn upload_path(&self, id: &str) -> PathBuf {
        self.settings.upload_dir.join(id)
    }

    /// Where the session `id` of the repository stages its bytes, or
    /// `BLOB_UPLOAD_UNKNOWN`.
    async fn session_of(&self, repo: &Repository, id: &str) -> Result<PathBuf> {
        let unknown = || oci(OciCode::BlobUploadUnknown, format!("{repo} has no upload session {id}"));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(unknown());
        }
        match self.db.oci_upload(id).await? {
            Some(r) if r == repo.as_str() => Ok(self.upload_path(id)),
            _ => Err(unknown()),
        }
    }

    /// The file of the session `id` of the repository and how many bytes
    /// it holds, or `BLOB_UPLOAD_UNKNOWN` (also when the session's bytes
    /// are staged on another server, which is not an internal error).
    async fn open_session(&self, repo: &Repository, id: &str) -> Result<(PathBuf, u64)> {
        let path = self.session_of(repo, id).await?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok((path, m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(oci(
                OciCode::BlobUploadUnknown,
                format!(
                    "upload session {id} of {repo} is staged on another server: \
                     the requests of one chunked upload must reach the same server"
                ),
            )),
            Err(e) => Err(Error::internal(e)),
        }
    }

    /// Starts an upload session; returns its id.
    pub async fn oci_start_upload(&self, v: &Visitor, repo: &Repository) -> Result<String> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        self.oci_service_exists(repo).await?;
        let id = uuid::Uuid::now_v7().to_string();
        // Private like the store's own uploads, whatever the umask: a
        // session file becomes a blob by a rename.
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.settings.upload_dir)
            .await
            .map_err(Error::internal)?;
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.upload_path(&id))
            .await
            .map_err(Error::internal)?;
        self.db.insert_oci_upload(&id, repo.as_str(), self.now()).await?;
        self.uploads_lock().insert(id.clone(), Hasher::new());
        Ok(id)
    }

    fn uploads_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hasher>> {
        self.uploads.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mounts a blob of repository `from` into `repo`: `true` when it is
    /// stored and the visitor may read it there (nothing is copied: the
    /// repositories share the store); `false` otherwise (the client then
    /// uploads it).
    pub async fn oci_mount(&self, v: &Visitor, repo: &Repository, digest: &Digest, from: &Repository) -> Result<bool> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        self.oci_service_exists(repo).await?;
        if self.oci_allow(v, from, RepoAction::Pull).is_err() || !self.oci_may_read(v, from, digest).await? {
            return Ok(false);
        }
        if self.store.stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.db.claim_blobs(&[*digest], self.now()).await?;
        Ok(true)
    }

    /// A whole blob in one request (`POST …/uploads/?digest=`): streamed
    /// to the store, which keeps it only if it hashes to `digest`.
    pub async fn oci_put_blob(
        &self,
        v: &Visitor,
        repo: &Repository,
        digest: &Digest,
        declared: Option<u64>,
        body: ByteStream,
    ) -> Result<()> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        self.oci_service_exists(repo).await?;
        self.store_blob(digest, declared, body).await
    }

    async fn store_blob(&self, digest: &Digest, declared: Option<u64>, body: ByteStream) -> Result<()> {
        let limit = self.settings.max_blob_size;
        if declared.is_some_and(|n| n > limit) {
            return Err(Error::TooLarge { limit });
        }
        if self.store.stat(digest).await?.is_none() {
            let size = self.store.put(digest, body, limit).await.map_err(|e| match e {
                tug_store::Error::DigestMismatch { expected, actual, .. } => oci(
                    OciCode::DigestInvalid,
                    format!("the content hashes to {actual}, not {expected}; nothing was stored"),
                ),
                e => e.into(),
            })?;
            self.metrics.bytes_in(size);
        }
        self.db.claim_blobs(&[*digest], self.now()).await?;
        Ok(())
    }

    /// How many bytes a session holds.
    pub async fn oci_upload_status(&self, v: &Visitor, repo: &Repository, id: &str) -> Result<u64> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        Ok(self.open_session(repo, id).await?.1)
    }

    /// Appends a chunk to a session. `start` is where the client says the
    /// chunk begins (its `Content-Range`); it must be where the session
    /// ends.
    pub async fn oci_upload_chunk(
        &self,
        v: &Visitor,
        repo: &Repository,
        id: &str,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<ChunkOutcome> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        let (path, held) = self.open_session(repo, id).await?;
        if start.is_some_and(|s| s != held) {
            return Ok(ChunkOutcome::OutOfOrder(held));
        }
        self.append(id, &path, held, body).await.map(ChunkOutcome::Accepted)
    }

    /// Appends `body` to the session's file, hashing as it goes; returns
    /// the session's size.
    async fn append(&self, id: &str, path: &std::path::Path, held: u64, mut body: ByteStream) -> Result<u64> {
        // The running hash continues only if it covers exactly the bytes
        // the file holds; otherwise it is rebuilt when the session ends.
        // It is put back only after the whole chunk was written, so a
        // chunk cut short leaves the session to be hashed from its file.
        let mut hasher = self.uploads_lock().remove(id).filter(|h| h.len() == held);
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .await
            .map_err(Error::internal)?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let limit = self.settings.max_blob_size;
        let mut size = held;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|source| Error::UploadInterrupted { received: size, source })?
        {
            size = size
                .checked_add(chunk.len() as u64)
                .filter(|s| *s <= limit)
                .ok_or(Error::TooLarge { limit })?;
            out.write_all(&chunk).await.map_err(Error::internal)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
        }
        out.flush().await.map_err(Error::internal)?;
        if let Some(h) = hasher {
            self.uploads_lock().insert(id.to_string(), h);
        }
        Ok(size)
    }

    /// Ends a session (`PUT …?digest=`, with an optional last chunk): the
    /// bytes must hash to `digest`, else nothing is stored and the session
    /// is gone.
    pub async fn oci_finish_upload(
        &self,
        v: &Visitor,
        repo: &Repository,
        id: &str,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<()> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        let (path, held) = self.open_session(repo, id).await?;
        let appended = self.append(id, &path, held, body).await;
        let result = match appended {
            Ok(_) => self.commit_upload(id, &path, digest).await,
            Err(e) => Err(e),
        };
        self.end_session(id, &path).await?;
        result
    }

    async fn commit_upload(&self, id: &str, path: &std::path::Path, digest: &Digest) -> Result<()> {
        let held = self.uploads_lock().remove(id);
        let actual = match held {
            Some(h) => h.finish(),
            None => hash_file(path).await?,
        };
        if actual != *digest {
            return Err(oci(
                OciCode::DigestInvalid,
                format!("the upload hashes to {actual}, not {digest}; nothing was stored"),
            ));
        }
        if self.store.stat(digest).await?.is_none() {
            let size = self
                .store
                .put_verified_file(digest, path, self.settings.max_blob_size)
                .await?;
            self.metrics.bytes_in(size);
        }
        self.db.claim_blobs(&[*digest], self.now()).await?;
        Ok(())
    }

    async fn end_session(&self, id: &str, path: &std::path::Path) -> Result<()> {
        self.uploads_lock().remove(id);
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::internal(e)),
        }
        self.db.delete_oci_upload(id).await?;
        Ok(())
    }

    /// Cancels a session.
    pub async fn oci_cancel_upload(&self, v: &Visitor, repo: &Repository, id: &str) -> Result<()> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        let path = self.session_of(repo, id).await?;
        self.end_session(id, &path).await
    }

    /// Removes the upload sessions started before `cutoff` (gc); returns
    /// how many.
    pub(crate) async fn forget_stale_uploads(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let mut n = 0;
        for id in self.db.stale_oci_uploads(cutoff).await? {
            self.end_session(&id, &self.upload_path(&id)).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores a manifest: checked (JSON, media type, every blob and child
    /// manifest present, the digest if one was given), kept as a blob, and
    /// placed: under a free tag, untagged, or as the image of the draft
    /// build whose `build-<id>` tag it was pushed to. Environment tags,
    /// versions of existing builds and sealed or abandoned builds' tags
    /// are refused.
    pub async fn oci_put_manifest(
        &self,
        v: &Visitor,
        repo: &Repository,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest> {
        self.oci_allow(v, repo, RepoAction::Push)?;
        self.oci_service_exists(repo).await?;
        let Visitor::Token { who, .. } = v else {
            return Err(super::refused(v, "push"));
        };
        if bytes.len() > MAX_MANIFEST {
            return Err(oci(
                OciCode::SizeInvalid,
                format!(
                    "the manifest has {} bytes; at most {MAX_MANIFEST} are accepted",
                    bytes.len()
                ),
            ));
        }
        let digest = Digest::of(&bytes);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(oci(
                    OciCode::DigestInvalid,
                    format!("the manifest hashes to {digest}, not {d}; nothing was stored"),
                ));
            }
        }
        let parsed = parse_manifest(&bytes, content_type).map_err(Error::Oci)?;
        // Every blob it names must be stored; an index's children must be
        // manifests of this repository, whose blobs it then refers to too.
        let mut refs = parsed.blobs();
        for d in parsed.blobs() {
            let present = match parsed.kind {
                ManifestKind::Image => self.store.stat(&d).await?.is_some(),
                ManifestKind::Index => self.db.oci_manifest(repo.as_str(), &d).await?.is_some(),
            };
            if !present {
                return Err(oci(
                    OciCode::ManifestBlobUnknown,
                    format!("the manifest refers to {d}, which {repo} does not hold; push it first"),
                ));
            }
            if parsed.kind == ManifestKind::Index {
                refs.extend(self.db.oci_manifest_refs(&d).await?);
            }
        }
        refs.sort();
        refs.dedup();
        let placement = match tag_of(reference) {
            None => ManifestPlacement::Untagged,
            Some(tag) => {
                self.placement(who, repo, tag, &parsed, &digest, bytes.len() as u64)
                    .await?
            }
        };
        self.store_blob(&digest, Some(bytes.len() as u64), bytes_stream(bytes.clone()))
            .await?;
        self.db.claim_blobs(&refs, self.now()).await?;
        let row = OciManifestRow {
            repository: repo.as_str().to_string(),
            digest,
            media_type: parsed.media_type.clone(),
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject,
            annotations: parsed
                .annotations
                .as_ref()
                .map(|a| serde_json::to_string(a).map_err(Error::internal))
                .transpose()?,
            size: bytes.len() as u64,
            created_at: self.now(),
        };
        self.db
            .put_oci_manifest(&row, &refs, &placement)
            .await
            .map_err(|e| match e {
                tug_db::Error::NotDraft { id, state } => oci(
                    OciCode::Denied,
                    format!("build {id} is {state}: its image can no longer change; push to a draft build's tag"),
                ),
                tug_db::Error::DuplicateArtifact { id, name, existing } => oci(
                    OciCode::Denied,
                    format!("build {id} already has the image {name} ({existing}); a build's image is pushed once"),
                ),
                e => e.into(),
            })?;
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
        })
    }

    /// Where a manifest pushed to `tag` goes, or why it may not.
    async fn placement(
        &self,
        who: &Principal,
        repo: &Repository,
        tag: &tug_core::oci::Tag,
        parsed: &tug_core::oci::ParsedManifest,
        digest: &Digest,
        size: u64,
    ) -> Result<ManifestPlacement> {
        let denied = |m: String| oci(OciCode::Denied, m);
        if let Some(id) = tag.build() {
            let reference = BuildRef::parse(id.as_str()).map_err(|e| Error::Invalid(e.to_string()))?;
            let build = self
                .resolve_visible(who, &reference)
                .await
                .map_err(|_| oci(OciCode::NameUnknown, format!("build {id} does not exist")))?;
            if build.service != *repo.service() {
                return Err(denied(format!(
                    "build {id} belongs to service {}; push to {}/{}",
                    build.service,
                    build.service,
                    repo.image()
                )));
            }
            if build.state != BuildState::Draft {
                return Err(denied(format!(
                    "build {id} is {}: its image can no longer change; create a new build and push to its tag",
                    build.state
                )));
            }
            let platform = match (parsed.kind, parsed.config) {
                (ManifestKind::Image, Some(config)) => self
                    .read_small_blob(&config)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|c| config_platform(&c)),
                _ => None,
            };
            return Ok(ManifestPlacement::Build {
                id: build.id,
                artifact: ArtifactSpec {
                    name: repo.image().clone(),
                    kind: tug_core::ArtifactKind::Oci,
                    platform,
                    size,
                    digest: *digest,
                    derived_from: parsed.derived_from().map_err(Error::Oci)?,
                    executable: false,
                    uri: None,
                },
            });
        }
        if let Ok(env) = EnvName::parse(tag.as_str()) {
            if self.environment_of(repo.service(), &env).await.is_ok() {
                return Err(denied(format!(
                    "{tag} is an environment of {}: its tag follows the build it runs; release or promote a build instead",
                    repo.service()
                )));
            }
        }
        let taken = self
            .db
            .build_versions(repo.service())
            .await?
            .into_iter()
            .any(|(version, _)| version.to_string() == tag.as_str());
        if taken {
            return Err(denied(format!(
                "{tag} is the version of a build of {}: push to the build's tag build-<id> instead",
                repo.service()
            )));
        }
        Ok(ManifestPlacement::Tag(tag.to_string()))
    }

    /// Deletes a manifest by digest, or a free tag. The images of builds
    /// and the tags derived from builds and environments are not deleted
    /// here (they go with their builds).
    pub async fn oci_delete(&self, v: &Visitor, repo: &Repository, reference: &Reference) -> Result<()> {
        self.oci_allow(v, repo, RepoAction::Delete)?;
        let unknown = || oci(OciCode::ManifestUnknown, format!("{repo} has no manifest {reference}"));
        match reference {
            Reference::Tag(tag) => {
                if self.db.delete_oci_tag(repo.as_str(), tag.as_str()).await? {
                    Ok(())
                } else {
                    Err(unknown())
                }
            }
            Reference::Digest(d) => {
                if !self.oci_may_read(v, repo, d).await? {
                    return Err(unknown());
                }
                if !self
                    .db
                    .oci_manifest_builds(repo.service(), repo.image(), d)
                    .await?
                    .is_empty()
                {
                    return Err(oci(
                        OciCode::Denied,
                        format!("{d} is the image of a build; it goes when the build does"),
                    ));
                }
                if self.db.delete_oci_manifest(repo.as_str(), d).await? {
                    Ok(())
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

/// A body of one chunk.
fn bytes_stream(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

/// Hashes a file (a session whose running hash this server does not hold).
async fn hash_file(path: &std::path::Path) -> Result<Digest> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok::<_, std::io::Error>(hasher.finish());
            }
            hasher.update(buf.get(..n).unwrap_or_default());
        }
    })
    .await
    .map_err(Error::internal)?
    .map_err(Error::internal)
}
