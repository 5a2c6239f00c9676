//! A reference to a build as a user writes it (a build id, a unique prefix
//! of one, or a manifest digest), parsed once where it enters: the server's
//! routes parse it, the service resolves it.

use crate::short_id::{IdPrefix, MIN_PREFIX};
use crate::{BuildId, Digest};

/// How much of a reference an error message repeats.
const SHOWN: usize = 80;

/// A parsed build reference; it keeps the text it was written as, which
/// messages about it repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRef {
    text: String,
    target: BuildTarget,
}

/// What a [`BuildRef`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildTarget {
    Id(BuildId),
    Manifest(Digest),
    Prefix(IdPrefix),
}

/// Why a text does not name a build; its message says what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildRefError(String);

impl BuildRef {
    pub fn parse(text: &str) -> Result<BuildRef, BuildRefError> {
        let target = if text.starts_with(crate::digest::PREFIX) {
            Digest::parse(text)
                .map(BuildTarget::Manifest)
                .map_err(|e| BuildRefError(e.to_string()))?
        } else if let Ok(id) = BuildId::parse(text) {
            BuildTarget::Id(id)
        } else if let Some(prefix) = IdPrefix::parse(text) {
            BuildTarget::Prefix(prefix)
        } else {
            return Err(BuildRefError(format!(
                "{:?} does not name a build: give a build id, a unique prefix of one (at least {MIN_PREFIX} hex digits, as tug shows them) or a manifest digest (sha256:…)",
                text.chars().take(SHOWN).collect::<String>()
            )));
        };
        Ok(BuildRef {
            text: text.to_string(),
            target,
        })
    }

    pub fn target(&self) -> &BuildTarget {
        &self.target
    }

    /// The reference as written, cut to a length a message may repeat.
    pub fn shown(&self) -> String {
        self.text.chars().take(SHOWN).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_into_what_they_name() {
        let id = "0190d8a4-6c2e-7b1a-9f3e-4d5c6b7a8e9f";
        assert!(matches!(BuildRef::parse(id).unwrap().target(), BuildTarget::Id(_)));
        assert!(matches!(
            BuildRef::parse("0190d8a4").unwrap().target(),
            BuildTarget::Prefix(_)
        ));
        let e = BuildRef::parse("latest").unwrap_err();
        assert!(e.to_string().starts_with("\"latest\" does not name a build"), "{e}");
        assert!(BuildRef::parse("sha256:nothex").is_err());
    }
}
