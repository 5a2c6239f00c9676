//! Blobs: which the store lacks, uploads (checked against their digest and
//! the size limit), and reads, each allowed only to callers who may see a
//! build that refers to the blob.

use super::*;

impl Tugboat {
    /// Which of `digests` the store lacks. Those it has are claimed, so gc
    /// leaves them alone while the client registers them.
    pub async fn missing_blobs(&self, who: &Principal, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.require(who, Action::WriteBuilds)?;
        let mut missing = Vec::new();
        let mut present = Vec::new();
        let mut seen = HashSet::new();
        let unique: Vec<Digest> = digests.iter().filter(|d| seen.insert(**d)).copied().collect();
        for (d, stat) in self.stat_all(unique).await {
            match stat? {
                Some(_) => present.push(d),
                None => missing.push(d),
            }
        }
        self.db.claim_blobs(&present, self.now()).await?;
        Ok(missing)
    }

    /// Stores a blob from a stream. When the store already has it the body
    /// is not read at all (an `Expect: 100-continue` client then sends
    /// nothing). `declared_size` is the request's Content-Length, checked
    /// against the limit before a byte is read.
    pub async fn put_blob(
        &self,
        who: &Principal,
        digest: &Digest,
        declared_size: Option<u64>,
        body: ByteStream,
    ) -> Result<Stored> {
        self.require(who, Action::WriteBuilds)?;
        let limit = self.settings.max_blob_size;
        if let Some(size) = declared_size {
            if size > limit {
                return Err(Error::TooLarge { limit });
            }
        }
        if let Some(size) = self.store.stat(digest).await? {
            self.db.claim_blobs(&[*digest], self.now()).await?;
            return Ok(Stored { size, created: false });
        }
        let size = self.store.put(digest, body, limit).await?;
        self.metrics.bytes_in(size);
        self.db.claim_blobs(&[*digest], self.now()).await?;
        Ok(Stored { size, created: true })
    }

    /// Stats many blobs, a few at a time, in order.
    pub(crate) async fn stat_all(&self, digests: Vec<Digest>) -> Vec<(Digest, tug_store::Result<Option<u64>>)> {
        let store = self.store.clone();
        futures::stream::iter(digests)
            .map(move |d| {
                let store = store.clone();
                async move { (d, store.stat(&d).await) }
            })
            .buffered(16)
            .collect()
            .await
    }

    /// The size of a blob the caller may read (see
    /// [`Tugboat::get_blob`]); `None` when it is not stored or not the
    /// caller's to read.
    pub async fn stat_blob(&self, who: &Principal, digest: &Digest) -> Result<Option<u64>> {
        self.require(who, Action::Follow)?;
        if !self.may_read_blob(who, digest).await? {
            return Ok(None);
        }
        Ok(self.store.stat(digest).await?)
    }

    /// A blob's bytes. The caller must be able to see a build that refers
    /// to it (a blob only embargoed builds or other services' builds refer
    /// to is not found); a blob no build refers to yet is readable by those
    /// who may upload.
    pub async fn get_blob(&self, who: &Principal, digest: &Digest, start: u64, end: Option<u64>) -> Result<Blob> {
        self.require(who, Action::Follow)?;
        if !self.may_read_blob(who, digest).await? {
            return Err(Error::BlobNotFound(*digest));
        }
        self.read_counted(digest, start, end)
            .await?
            .ok_or(Error::BlobNotFound(*digest))
    }

    /// The bytes of a blob from `start` up to `end`, counted in the
    /// metrics as they are sent; `None` when it is not stored. Only for
    /// use cases that have already decided the caller may read it (every
    /// reader of blobs ends here, so each download is counted alike).
    pub(crate) async fn read_counted(&self, digest: &Digest, start: u64, end: Option<u64>) -> Result<Option<Blob>> {
        Ok(self.store.get(digest, start, end).await?.map(|b| self.counted(b)))
    }

    /// `blob` with its bytes counted in the metrics as the body is sent,
    /// so a download cut short counts what went out.
    fn counted(&self, blob: Blob) -> Blob {
        let sent = self.metrics.bytes_out();
        let body = blob.body.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                sent.inc_by(bytes.len() as u64);
            }
        });
        Blob {
            body: Box::pin(body),
            ..blob
        }
    }
}
