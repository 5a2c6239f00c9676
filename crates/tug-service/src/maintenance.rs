//! Store maintenance: fsck (with repair) and gc.

use super::*;

impl Tugboat {
    /// Re-hashes every stored blob and lists those whose bytes no longer
    /// match their name, and digests builds refer to that are gone, with
    /// the builds that need each.
    pub async fn fsck(&self, who: &Principal) -> Result<FsckReport> {
        self.check_store(who, Fsck::Report).await
    }

    /// `fsck`, and moves every corrupt blob aside (see
    /// [`BlobStore::quarantine`]): it then counts as missing, and the next
    /// upload of its digest (`tug push` of the right file) stores it again,
    /// where before it was answered "already stored" and the bytes stayed
    /// wrong for good.
    pub async fn fsck_repair(&self, who: &Principal) -> Result<FsckReport> {
        self.check_store(who, Fsck::Repair).await
    }

    pub(crate) async fn check_store(&self, who: &Principal, mode: Fsck) -> Result<FsckReport> {
        self.require(who, Action::Maintain)?;
        let mut report = FsckReport {
            repaired: mode == Fsck::Repair,
            ..FsckReport::default()
        };
        let blobs = self.store.list().await?;
        let mut present: HashSet<Digest> = blobs.iter().map(|b| b.digest).collect();
        for BlobInfo { digest, .. } in blobs {
            let Some(mut blob) = self.store.get(&digest, 0, None).await? else {
                continue; // deleted since it was listed
            };
            let mut hasher = Hasher::new();
            while let Some(chunk) = blob.body.next().await {
                hasher.update(&chunk.map_err(Error::internal)?);
            }
            let size = hasher.len();
            let actual = hasher.finish();
            report.checked += 1;
            report.bytes += size;
            if actual == digest {
                continue;
            }
            tracing::error!(%digest, %actual, size, "stored blob does not match its digest");
            let moved_to = match mode {
                Fsck::Report => None,
                Fsck::Repair => {
                    let moved = self.store.quarantine(&digest).await?;
                    if let Some(to) = &moved {
                        tracing::warn!(%digest, to, "moved a corrupt blob aside; upload it again");
                        present.remove(&digest);
                    }
                    moved
                }
            };
            report.corrupt.push(CorruptBlob {
                digest,
                actual,
                size,
                moved_to,
            });
        }
        let mut missing: Vec<Digest> = self
            .db
            .referenced_digests()
            .await?
            .into_iter()
            .filter(|d| !present.contains(d))
            .collect();
        missing.sort();
        let damaged: std::collections::BTreeSet<Digest> = report
            .corrupt
            .iter()
            .map(|c| c.digest)
            .chain(missing.iter().copied())
            .collect();
        report.needed_by = self.db.blob_users(&damaged.into_iter().collect::<Vec<_>>()).await?;
        report.missing = missing;
        Ok(report)
    }

    /// Abandons stale drafts, then deletes blobs no build refers to. A blob
    /// of a sealed build is never deleted; blobs younger than the grace
    /// period, or claimed by a push within it, are kept. A dry run changes
    /// nothing and reports what the same run would do: the drafts it would
    /// abandon and the blobs that abandoning them would free.
    pub async fn gc(&self, who: &Principal, options: GcOptions) -> Result<GcReport> {
        self.require(who, Action::Maintain)?;
        let now = self.now();
        let draft_cutoff = gc_cutoff(
            now,
            options.draft_max_age,
            "draft_max_age_secs",
            self.settings.draft_max_age,
            "the server's draft_max_age_secs",
        )?;
        let blob_cutoff = gc_cutoff(
            now,
            options.grace,
            "grace_secs",
            self.settings.gc_grace,
            "the server's gc_grace_secs",
        )?;
        let mut report = GcReport {
            abandoned_drafts: if options.dry_run {
                self.db.stale_drafts(draft_cutoff).await?
            } else {
                self.db.abandon_stale_drafts(draft_cutoff).await?
            },
            ..GcReport::default()
        };
        report.abandoned_drafts.sort();
        let mut referenced = self.db.digests_kept_after_abandoning(draft_cutoff).await?;
        // The registry's manifests that are tagged, images of kept builds,
        // recent, or referrers of those, with everything they refer to;
        // the others are forgotten, and their blobs collected below.
        let oci_kept = self.db.oci_kept(draft_cutoff, blob_cutoff).await?;
        if !options.dry_run {
            self.db.forget_oci_manifests(&oci_kept, blob_cutoff).await?;
            let upload_cutoff = gc_cutoff(now, None, "", self.settings.upload_max_age, "the server's upload age")?;
            self.forget_stale_uploads(upload_cutoff).await?;
        }
        referenced.extend(oci_kept);
        let claimed = self.db.claimed_since(blob_cutoff).await?;
        for blob in self.store.list().await? {
            let young = blob.modified > blob_cutoff;
            if referenced.contains(&blob.digest) || claimed.contains(&blob.digest) || young {
                report.kept += 1;
                continue;
            }
            if options.dry_run {
                report.deleted.push(blob.digest);
                report.freed_bytes += blob.size;
                continue;
            }
            // A registration may have landed since the set was read.
            if self.db.is_referenced(&blob.digest).await? {
                report.kept += 1;
                continue;
            }
            if self.store.delete(&blob.digest).await? {
                self.db.forget_claim(&blob.digest).await?;
                report.deleted.push(blob.digest);
                report.freed_bytes += blob.size;
            }
        }
        Ok(report)
    }
}
