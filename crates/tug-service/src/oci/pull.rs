//! Registry reads: manifests by tag or digest, blobs (ranged), the tags of
//! a repository and the referrers of a manifest, each for what the
//! visitor may see.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::TryStreamExt;
use tug_core::oci::{OciCode, Reference, RepoAction, Repository, MAX_MANIFEST, OCI_INDEX};

use super::{oci, Visitor};
use crate::*;

/// A manifest as served: its exact bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct ManifestAnswer {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// One page of a repository's tags.
#[derive(Debug, Clone)]
pub struct TagPage {
    pub tags: Vec<String>,
    /// Whether tags follow the last one of this page.
    pub more: bool,
}

impl Tugboat {
    /// A manifest by tag or digest.
    pub async fn oci_manifest(&self, v: &Visitor, repo: &Repository, reference: &Reference) -> Result<ManifestAnswer> {
        self.oci_allow(v, repo, RepoAction::Pull)?;
        let digest = self.oci_resolve(v, repo, reference).await?;
        let row = self
            .db
            .oci_manifest(repo.as_str(), &digest)
            .await?
            .ok_or_else(|| oci(OciCode::ManifestUnknown, format!("{repo} has no manifest {reference}")))?;
        let bytes = self.read_small_blob(&digest).await?.ok_or_else(|| {
            oci(
                OciCode::ManifestUnknown,
                format!("the manifest {digest} is not in the store; push it again"),
            )
        })?;
        Ok(ManifestAnswer {
            digest,
            media_type: row.media_type,
            bytes,
        })
    }

    /// A small blob (a manifest, a config) read whole.
    pub(crate) async fn read_small_blob(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let Some(blob) = self.store.get(digest, 0, None).await? else {
            return Ok(None);
        };
        if blob.size > MAX_MANIFEST as u64 {
            return Err(oci(
                OciCode::SizeInvalid,
                format!("blob {digest} is larger than {MAX_MANIFEST} bytes"),
            ));
        }
        let chunks: Vec<Bytes> = blob.body.try_collect().await.map_err(Error::internal)?;
        Ok(Some(chunks.concat().into()))
    }

    /// The size of a blob the visitor may read from the repository.
    pub async fn oci_blob_size(&self, v: &Visitor, repo: &Repository, digest: &Digest) -> Result<u64> {
        self.oci_allow(v, repo, RepoAction::Pull)?;
        let unknown = || oci(OciCode::BlobUnknown, format!("{repo} has no blob {digest}"));
        if !self.oci_may_read(v, repo, digest).await? {
            return Err(unknown());
        }
        self.store.stat(digest).await?.ok_or_else(unknown)
    }

    /// A blob's bytes from `start` to `end` (exclusive; `None`: the end).
    pub async fn oci_blob(
        &self,
        v: &Visitor,
        repo: &Repository,
        digest: &Digest,
        start: u64,
        end: Option<u64>,
    ) -> Result<Blob> {
        self.oci_allow(v, repo, RepoAction::Pull)?;
        let unknown = || oci(OciCode::BlobUnknown, format!("{repo} has no blob {digest}"));
        if !self.oci_may_read(v, repo, digest).await? {
            return Err(unknown());
        }
        self.read_counted(digest, start, end).await?.ok_or_else(unknown)
    }

    /// The tags the visitor may see, sorted, `n` at most after `last`:
    /// the environments' tags, the builds' (`build-<id>`, and the
    /// version of each sealed one) and the free tags.
    pub async fn oci_tags(
        &self,
        v: &Visitor,
        repo: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagPage> {
        self.oci_allow(v, repo, RepoAction::Pull)?;
        self.oci_service_exists(repo).await?;
        let mut tags = BTreeSet::new();
        match v {
            Visitor::Anonymous => {
                for env in self.public_environments(repo.service()).await? {
                    for (name, image) in self
                        .db
                        .oci_environment_images(repo.service(), repo.image(), Some(&env.name))
                        .await?
                    {
                        if super::public_image(&image) {
                            tags.insert(name.to_string());
                        }
                    }
                }
            }
            Visitor::Token { who, .. } => {
                let images = self.db.oci_build_images(repo.service(), repo.image()).await?;
                let sights = self
                    .sights(who, images.iter().map(|i| i.build.id.clone()).collect())
                    .await?;
                for image in images.iter().filter(|i| sights.full(&i.build.id)) {
                    tags.insert(tug_core::oci::Tag::of_build(&image.build.id).to_string());
                    if image.state == BuildState::Sealed
                        && tug_core::oci::Tag::parse(&image.version.to_string()).is_ok()
                    {
                        tags.insert(image.version.to_string());
                    }
                }
                for (env, image) in self
                    .db
                    .oci_environment_images(repo.service(), repo.image(), None)
                    .await?
                {
                    if sights.full(&image.build.id) {
                        tags.insert(env.to_string());
                    }
                }
                tags.extend(self.db.oci_tags(repo.as_str()).await?);
            }
        }
        let after: Vec<String> = tags
            .into_iter()
            .filter(|t| last.is_none_or(|l| t.as_str() > l))
            .collect();
        let n = n.unwrap_or(after.len());
        let more = after.len() > n;
        Ok(TagPage {
            tags: after.into_iter().take(n).collect(),
            more,
        })
    }

    /// The referrers of `subject` in the repository (manifests whose
    /// `subject` it is), as an image index; `artifact_type` filters them.
    pub async fn oci_referrers(
        &self,
        v: &Visitor,
        repo: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes> {
        self.oci_allow(v, repo, RepoAction::Pull)?;
        self.oci_service_exists(repo).await?;
        let mut manifests = Vec::new();
        for m in self.db.oci_referrers(repo.as_str(), subject).await? {
            if artifact_type.is_some_and(|t| m.artifact_type.as_deref() != Some(t)) {
                continue;
            }
            if !self.oci_may_read(v, repo, &m.digest).await? {
                continue;
            }
            let mut d = serde_json::json!({
                "mediaType": m.media_type,
                "digest": m.digest.to_string(),
                "size": m.size,
            });
            if let Some(t) = &m.artifact_type {
                d["artifactType"] = serde_json::Value::String(t.clone());
            }
            if let Some(a) = m
                .annotations
                .as_deref()
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
            {
                d["annotations"] = a;
            }
            manifests.push(d);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        Ok(serde_json::to_vec(&index).map_err(Error::internal)?.into())
    }
}
