//! Filesystem backend (placeholder until implemented).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tug_core::Digest;

use crate::{Blob, BlobInfo, BlobStore, ByteStream, Result};

pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: impl AsRef<Path>) -> Result<FsStore> {
        Ok(FsStore { root: root.as_ref().to_path_buf() })
    }
}

#[async_trait]
impl BlobStore for FsStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
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
