//! S3 backend (placeholder until implemented).

use async_trait::async_trait;
use tug_core::Digest;

use crate::{Blob, BlobInfo, BlobStore, ByteStream, Result};

/// Credentials for an S3-compatible store. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials: Option<Credentials>,
}

impl S3Config {
    pub fn parse(address: &str, credentials: Option<Credentials>) -> Result<S3Config> {
        let _ = address;
        Ok(S3Config { bucket: String::new(), prefix: String::new(), endpoint: None, region: "us-east-1".into(), credentials })
    }
}

pub struct S3Store {
    config: S3Config,
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store> {
        Ok(S3Store { config })
    }
}

#[async_trait]
impl BlobStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }
    async fn stat(&self, _digest: &Digest) -> Result<Option<u64>> {
        unimplemented!()
    }
    async fn put(&self, _digest: &Digest, _body: ByteStream, _limit: u64) -> Result<u64> {
        unimplemented!()
    }
    async fn get(&self, _digest: &Digest, _start: u64, _end: Option<u64>) -> Result<Option<Blob>> {
        unimplemented!()
    }
    async fn delete(&self, _digest: &Digest) -> Result<bool> {
        unimplemented!()
    }
    async fn list(&self) -> Result<Vec<BlobInfo>> {
        unimplemented!()
    }
    async fn clean_temporary(&self) -> Result<u64> {
        unimplemented!()
    }
}
