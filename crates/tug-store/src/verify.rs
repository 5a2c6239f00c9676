//! Reading a put's body the same way in every backend: count the bytes,
//! stop at the size limit, hash what arrived and compare it with the digest
//! the writer claimed. Storing the bytes is the backend's business.

use bytes::Bytes;
use futures::StreamExt;
use tug_core::{Digest, Hasher};

use crate::{ByteStream, Error, Result};

/// A put's body being read and hashed.
pub(crate) struct VerifiedBody {
    body: ByteStream,
    hasher: Hasher,
    limit: u64,
}

impl VerifiedBody {
    pub(crate) fn new(body: ByteStream, limit: u64) -> VerifiedBody {
        VerifiedBody {
            body,
            hasher: Hasher::new(),
            limit,
        }
    }

    /// The next chunk, already counted and hashed; `None` at the end of the
    /// body. Fails as soon as the body passes the limit, so an oversized
    /// upload is refused without reading (or storing) the rest of it.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        match self.body.next().await {
            None => Ok(None),
            Some(Err(source)) => Err(Error::Interrupted {
                received: self.hasher.len(),
                source,
            }),
            Some(Ok(chunk)) => {
                if self.hasher.len().saturating_add(chunk.len() as u64) > self.limit {
                    return Err(Error::TooLarge { limit: self.limit });
                }
                self.hasher.update(&chunk);
                Ok(Some(chunk))
            }
        }
    }

    /// Compares the digest of everything read with `expected` and returns
    /// the size of the body.
    pub(crate) fn finish(self, expected: &Digest) -> Result<u64> {
        let size = self.hasher.len();
        let actual = self.hasher.finish();
        if actual == *expected {
            Ok(size)
        } else {
            Err(Error::DigestMismatch {
                expected: *expected,
                actual,
                size,
            })
        }
    }
}
