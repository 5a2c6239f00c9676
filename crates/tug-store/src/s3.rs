//! The S3 backend: blobs are objects in a bucket of any S3-compatible store
//! (AWS, MinIO, SeaweedFS, R2…), reached through `object_store`.
//!
//! Keys are `<prefix>/blobs/sha256/<64 hex>`; blobs fsck found damaged
//! and was told to repair are moved to `<prefix>/corrupt/sha256/<64
//! hex>.<time>`, outside the blobs. A put starts a multipart
//! upload directly at the blob's key, streams the body in fixed-size parts
//! while hashing it, and completes the upload only when the digest matches
//! and the size is within the limit; otherwise it aborts it. An incomplete
//! multipart upload is invisible to readers, so a blob is visible only once
//! verified, without a copy from a temporary key.
//!
//! This module reads no environment: the address and the credentials are
//! passed in by the binary.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload};
use tokio::task::JoinSet;
use tug_core::Digest;

use crate::verify::VerifiedBody;
use crate::{Blob, BlobInfo, BlobStore, ByteStream, Error, Result};

/// The size of every part but the last. S3 wants at least 5 MiB and at most
/// 10,000 parts (so blobs up to about 80 GB); some stores (R2) also want all
/// parts but the last to be the same size, hence fixed-size parts.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploaded at once by one put, besides the one being filled. One
/// put then holds at most `(PARTS_IN_FLIGHT + 1) * PART_SIZE` = 16 MiB of
/// body, so four concurrent 1 GiB puts peaked at 75 MiB RSS for the whole
/// process (against SeaweedFS on loopback, `examples/put_throughput.rs`);
/// with two in flight they peaked at 107 MiB, too close to the 128 MiB a
/// server must stay under, for no measurable gain in throughput. Filling
/// the next part while one uploads keeps the link busy as long as the
/// client sends no faster than one request to the store can carry.
const PARTS_IN_FLIGHT: usize = 1;

/// Query keys an `s3://` address may carry.
const ADDRESS_KEYS: &str = "endpoint, region";

/// Credentials for an S3-compatible store. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where an S3 store's blobs live. Built by [`S3Config::parse`] from a
/// `--blob-store` address, or in code by tests.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing slashes; empty for the
    /// bucket's root.
    pub prefix: String,
    /// `http://host:port` or `https://…` of an S3-compatible server; `None`
    /// for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None` sends unsigned requests (a public bucket).
    pub credentials: Option<Credentials>,
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]`.
    pub fn parse(address: &str, credentials: Option<Credentials>) -> Result<S3Config> {
        let fail = |why: String| Error::Config {
            url: address.into(),
            why,
        };
        const FORM: &str = "write it as s3://BUCKET[/PREFIX][?endpoint=http://HOST:PORT&region=REGION]";

        let url = url::Url::parse(address).map_err(|e| fail(format!("it is not a URL ({e}); {FORM}")))?;
        if url.scheme() != "s3" {
            return Err(fail(format!("the scheme must be s3://; {FORM}")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail(
                "credentials do not belong in the address; pass them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            ));
        }
        if url.port().is_some() {
            return Err(fail(format!(
                "the bucket name cannot have a port; put the server in the endpoint parameter: {FORM}"
            )));
        }
        if url.fragment().is_some() {
            return Err(fail(format!("the address cannot have a #fragment; {FORM}")));
        }

        let bucket = url.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(fail(format!("the bucket name is missing; {FORM}")));
        }
        check_bucket(&bucket).map_err(|why| fail(format!("bucket {bucket:?} {why}")))?;

        let prefix = url.path().trim_matches('/').to_string();
        if !prefix.is_empty() {
            for segment in prefix.split('/') {
                check_prefix_segment(segment).map_err(|why| fail(format!("prefix {prefix:?} {why}")))?;
            }
        }

        let mut endpoint = None;
        let mut region = None;
        for (key, value) in url.query_pairs() {
            let slot = match &*key {
                "endpoint" => &mut endpoint,
                "region" => &mut region,
                other => {
                    return Err(fail(format!(
                        "unknown parameter {other:?}; the parameters are {ADDRESS_KEYS}"
                    )));
                }
            };
            if slot.is_some() {
                return Err(fail(format!("parameter {key:?} is given twice")));
            }
            if value.is_empty() {
                return Err(fail(format!(
                    "parameter {key:?} is empty; leave it out for the default"
                )));
            }
            *slot = Some(value.into_owned());
        }
        if let Some(value) = &endpoint {
            let parsed = url::Url::parse(value).map_err(|e| {
                fail(format!(
                    "endpoint {value:?} is not a URL ({e}); write it as http://HOST:PORT"
                ))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(fail(format!(
                    "endpoint {value:?} must be an http:// or https:// URL with a host"
                )));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(fail(format!(
                    "endpoint {value:?} cannot have a query or fragment; percent-encode it if it is meant to"
                )));
            }
        }
        let endpoint = endpoint.map(|e| e.trim_end_matches('/').to_string());

        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".into()),
            credentials,
        })
    }
}

/// S3's bucket naming rules, checked here so that a typo is reported
/// before the first request rather than as an obscure signature error.
fn check_bucket(bucket: &str) -> std::result::Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !ends_ok(bucket.as_bytes().first())
        || !ends_ok(bucket.as_bytes().last())
    {
        return Err("is not a valid bucket name: use 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit".into());
    }
    Ok(())
}

/// Prefix segments are restricted to characters that need no encoding in
/// any store, so the keys users see in their bucket are the ones they wrote.
fn check_prefix_segment(segment: &str) -> std::result::Result<(), String> {
    if segment.is_empty() {
        return Err("has an empty segment (two slashes in a row)".into());
    }
    if segment == "." || segment == ".." {
        return Err("cannot contain . or .. segments".into());
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("may contain only letters, digits, '-', '_', '.' and '/'".into());
    }
    Ok(())
}

/// A content-addressed store in an S3 bucket.
pub struct S3Store {
    config: S3Config,
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/blobs/sha256`.
    blobs_dir: Path,
    /// `<prefix>/corrupt/sha256`.
    quarantine_dir: Path,
}

impl S3Store {
    /// Builds the client; no request is made until the first operation.
    pub fn new(config: S3Config) -> Result<S3Store> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            // Path-style (`endpoint/bucket/key`) works with every
            // S3-compatible server, and with AWS; virtual-hosted style needs
            // DNS for `bucket.endpoint`.
            .with_virtual_hosted_style_request(false);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = match &config.credentials {
            Some(credentials) => {
                let builder = builder
                    .with_access_key_id(&credentials.access_key_id)
                    .with_secret_access_key(&credentials.secret_access_key);
                match &credentials.session_token {
                    Some(token) => builder.with_token(token),
                    None => builder,
                }
            }
            // Without this, object_store would look for credentials in the
            // environment and the instance metadata service; this crate
            // reads no environment, so no credentials means anonymous.
            None => builder.with_skip_signature(true),
        };
        let store = builder.build().map_err(|e| Error::Config {
            url: format!("s3://{}/{}", config.bucket, config.prefix),
            why: e.to_string(),
        })?;
        let blobs_dir = Path::from_iter(config.prefix.split('/').chain(["blobs", "sha256"]));
        let quarantine_dir = Path::from_iter(config.prefix.split('/').chain(["corrupt", "sha256"]));
        Ok(S3Store {
            config,
            store: Arc::new(store),
            blobs_dir,
            quarantine_dir,
        })
    }

    fn key(&self, digest: &Digest) -> Path {
        self.blobs_dir.child(digest.hex())
    }

    /// Reads the body into fixed-size parts and uploads them, returning the
    /// verified size. Completing or aborting is the caller's business.
    async fn upload_parts(
        &self,
        upload: &mut PartUpload,
        digest: &Digest,
        body: ByteStream,
        limit: u64,
    ) -> Result<u64> {
        let mut body = VerifiedBody::new(body, limit);
        let mut part = BytesMut::new();
        while let Some(mut chunk) = body.next().await? {
            while !chunk.is_empty() {
                if part.capacity() == 0 {
                    // Allocated only now, after the previous part was handed
                    // over, so that waiting for a free slot never holds a
                    // fresh buffer as well as the full one.
                    part.reserve(PART_SIZE);
                }
                let take = chunk.len().min(PART_SIZE - part.len());
                part.extend_from_slice(&chunk.split_to(take));
                if part.len() == PART_SIZE {
                    upload.send(std::mem::take(&mut part).freeze()).await?;
                }
            }
        }
        let size = body.finish(digest)?;
        if !part.is_empty() {
            upload.send(part.freeze()).await?;
        }
        Ok(size)
    }
}

#[async_trait]
impl BlobStore for S3Store {
    fn describe(&self) -> String {
        let endpoint = self.config.endpoint.as_deref().unwrap_or("AWS");
        format!(
            "s3://{}/{} at {} ({})",
            self.config.bucket, self.config.prefix, endpoint, self.config.region
        )
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, digest: &Digest, body: ByteStream, limit: u64) -> Result<u64> {
        let mut upload = PartUpload::new(self.store.put_multipart(&self.key(digest)).await?);
        match self.upload_parts(&mut upload, digest, body, limit).await {
            // Concurrent puts of one digest each complete their own upload
            // of the same bytes; the last one to complete wins.
            Ok(size) => upload.complete().await.map(|()| size),
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    async fn get(&self, digest: &Digest, start: u64, end: Option<u64>) -> Result<Option<Blob>> {
        let key = self.key(digest);
        let result = if start == 0 && end.is_none() {
            // The whole blob: one request, which also reports the size.
            self.store.get(&key).await
        } else {
            // A range needs the size first: S3 refuses ranges that start at
            // the end and cannot express an empty one. The blob cannot
            // change between the two requests (a key only ever holds the
            // bytes of its digest), so the size stays right.
            let Some(size) = self.stat(digest).await? else {
                return Ok(None);
            };
            if start > size {
                return Err(Error::RangeNotSatisfiable { start, size });
            }
            let end = end.map_or(size, |end| end.min(size)).max(start);
            if start == end {
                return Ok(Some(Blob {
                    size,
                    start,
                    body: futures::stream::empty().boxed(),
                }));
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(start..end)),
                ..GetOptions::default()
            };
            self.store.get_opts(&key, options).await
        };
        let result = match result {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = result.meta.size;
        let body = result.into_stream().map_err(io::Error::from).boxed();
        Ok(Some(Blob { size, start, body }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        // S3 reports success for deleting a missing key, so ask first. A
        // concurrent delete may make the answer stale; either way the blob
        // is gone afterwards.
        if self.stat(digest).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(&self.key(digest)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut blobs = Vec::new();
        let mut objects = self.store.list(Some(&self.blobs_dir));
        while let Some(meta) = objects.try_next().await? {
            // Only direct children named by a digest are blobs; anything
            // else under the prefix was put there by someone else.
            let Some(mut rest) = meta.location.prefix_match(&self.blobs_dir) else {
                continue;
            };
            let (Some(name), None) = (rest.next(), rest.next()) else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("{}{}", tug_core::digest::PREFIX, name.as_ref())) else {
                continue;
            };
            blobs.push(BlobInfo {
                digest,
                size: meta.size,
                modified: meta.last_modified,
            });
        }
        blobs.sort_by_key(|blob| blob.digest);
        Ok(blobs)
    }

    /// S3 has no rename: the object is copied to its quarantine key, then
    /// deleted. A crash in between leaves both, and the next repair moves
    /// the blob aside again under a new name.
    async fn quarantine(&self, digest: &Digest) -> Result<Option<String>> {
        let from = self.key(digest);
        let to = self
            .quarantine_dir
            .child(crate::quarantine_name(digest, chrono::Utc::now()));
        match self.store.copy(&from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        match self.store.delete(&from).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(format!("s3://{}/{to}", self.config.bucket)))
    }

    /// Does nothing and returns 0. Puts write no temporary objects: an
    /// interrupted put leaves at most an incomplete multipart upload, which
    /// no reader can see. Those uploads still hold storage, but
    /// `object_store` has no way to list them (ListMultipartUploads), so
    /// they are left to the bucket's lifecycle rule
    /// (`AbortIncompleteMultipartUpload`, e.g. after one day), which every
    /// bucket Tugboat uses should have. A put that fails or is cancelled
    /// while the server runs aborts its own upload.
    async fn clean_temporary(&self) -> Result<u64> {
        Ok(0)
    }
}

/// A multipart upload in progress, with at most [`PARTS_IN_FLIGHT`] parts
/// being sent. Dropped without [`PartUpload::complete`] or
/// [`PartUpload::abort`] (the put was cancelled), it aborts the upload in
/// the background so the parts do not linger until the lifecycle rule.
struct PartUpload {
    /// `None` once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl PartUpload {
    fn new(upload: Box<dyn MultipartUpload>) -> PartUpload {
        PartUpload {
            upload: Some(upload),
            parts: JoinSet::new(),
        }
    }

    /// Starts sending one part, after waiting for a free slot.
    async fn send(&mut self, part: Bytes) -> Result<()> {
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let upload = self
            .upload
            .as_mut()
            .expect("parts are sent only before complete or abort");
        // put_part numbers the part now, so parts keep their order however
        // the requests finish.
        self.parts.spawn(upload.put_part(PutPayload::from(part)));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.parts.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(join_error)) => Err(io::Error::other(join_error).into()),
        }
    }

    /// Waits for the parts in flight and makes the object visible.
    async fn complete(mut self) -> Result<()> {
        while !self.parts.is_empty() {
            if let Err(e) = self.join_one().await {
                self.abort().await;
                return Err(e);
            }
        }
        let mut upload = self.upload.take().expect("complete is called once");
        if let Err(e) = upload.complete().await {
            if let Err(abort_error) = upload.abort().await {
                tracing::warn!(error = %abort_error, "could not abort a multipart upload that failed to complete");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Stops the parts in flight and discards the upload. Failing to abort
    /// is only logged: the put already failed for a better reason, and the
    /// bucket's lifecycle rule removes the parts eventually.
    async fn abort(mut self) {
        self.parts.shutdown().await;
        if let Some(mut upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(error = %e, "could not abort a multipart upload");
            }
        }
    }
}

impl Drop for PartUpload {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        // Dropping `parts` cancels the parts in flight.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort the multipart upload of a cancelled put");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("session-token-secret".into()),
        }
    }

    fn why(address: &str) -> String {
        match S3Config::parse(address, None) {
            Err(Error::Config { url, why }) => {
                assert_eq!(url, address);
                why
            }
            other => panic!("{address} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn parses_bucket_prefix_endpoint_and_region() {
        let config = S3Config::parse(
            "s3://tug-blobs/team/prod/?endpoint=http://127.0.0.1:8333&region=eu-west-1",
            Some(credentials()),
        )
        .unwrap();
        assert_eq!(config.bucket, "tug-blobs");
        assert_eq!(config.prefix, "team/prod");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(config.region, "eu-west-1");
        assert!(config.credentials.is_some());
    }

    #[test]
    fn prefix_endpoint_and_region_are_optional() {
        for address in ["s3://tug-blobs", "s3://tug-blobs/", "s3://tug-blobs?"] {
            let config = S3Config::parse(address, None).unwrap();
            assert_eq!(config.bucket, "tug-blobs", "{address}");
            assert_eq!(config.prefix, "", "{address}");
            assert_eq!(config.endpoint, None, "{address}");
            assert_eq!(config.region, "us-east-1", "{address}");
        }
    }

    #[test]
    fn endpoint_may_be_percent_encoded_and_loses_its_trailing_slash() {
        let config = S3Config::parse("s3://b-1/p?endpoint=https%3A%2F%2Fs3.example.com%2F", None).unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("https://s3.example.com"));
    }

    #[test]
    fn refuses_malformed_addresses_saying_what_is_wrong() {
        let cases = [
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://Tug_Blobs", "not a valid bucket name"),
            ("s3://ab", "not a valid bucket name"),
            ("s3://tug-blobs:9000/x", "port"),
            ("s3://key:secret@tug-blobs", "credentials do not belong"),
            ("s3://tug-blobs/a//b", "empty segment"),
            ("s3://tug-blobs/a b", "may contain only"),
            ("s3://tug-blobs#x", "fragment"),
            ("s3://tug-blobs?endpoint=localhost:9000", "http:// or https://"),
            ("s3://tug-blobs?endpoint=not a url", "not a URL"),
            ("s3://tug-blobs?endpoint=", "is empty"),
            ("s3://tug-blobs?region=a&region=b", "given twice"),
            ("s3://tug-blobs?bucket=x", "unknown parameter \"bucket\""),
            ("s3://tug-blobs?pathstyle", "unknown parameter"),
            ("file:///var/lib/tug", "scheme must be s3://"),
            ("not an address", "not a URL"),
        ];
        for (address, expected) in cases {
            let why = why(address);
            assert!(why.contains(expected), "{address}: {why:?} should mention {expected:?}");
        }
        // Errors about the form show the form.
        assert!(why("s3://").contains("s3://BUCKET[/PREFIX]"));
        assert!(why("s3://tug-blobs?bucket=x").contains("endpoint, region"));
    }

    #[test]
    fn secrets_stay_out_of_describe_and_debug() {
        let config = S3Config::parse("s3://tug-blobs/p?endpoint=http://127.0.0.1:8333", Some(credentials())).unwrap();
        let debug = format!("{config:?}");
        let store = S3Store::new(config).unwrap();
        let described = store.describe();
        assert_eq!(described, "s3://tug-blobs/p at http://127.0.0.1:8333 (us-east-1)");
        for secret in ["wJalrXUtnFEMI", "session-token-secret"] {
            assert!(!debug.contains(secret), "{debug}");
            assert!(!described.contains(secret), "{described}");
        }
    }
}
