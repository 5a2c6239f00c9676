//! The public release catalog's answer (`GET /v1/releases/{service}`): the
//! versions a service published in its public environments, newest first,
//! with their files, where they came from and what changed since the
//! previous one. Anyone may read it; nothing in it needs a token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tug_core::{ArtifactKind, ArtifactName, BuildId, Digest, EnvName, Platform, ReferenceUri, ServiceName, Version};

/// One page of a service's published versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub service: ServiceName,
    /// Every public environment (or the one asked for), in pipeline
    /// order, with what it runs now.
    pub environments: Vec<PublicEnvironment>,
    /// Newest first: by when each version was first published.
    pub versions: Vec<PublishedVersion>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A public environment and the version it runs now (none before its
/// first deployment, or while what it runs may not be shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicEnvironment {
    pub name: EnvName,
    pub current: Option<CurrentRelease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRelease {
    pub version: Version,
    pub build: BuildId,
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedVersion {
    pub version: Version,
    pub build: BuildId,
    pub manifest_digest: Option<Digest>,
    /// When it was first deployed to a public environment (the one asked
    /// for, with `env`).
    pub published_at: DateTime<Utc>,
    /// Withdrawn after it was published: still listed and downloadable,
    /// but never deployed again.
    pub yanked: bool,
    pub environments: Vec<ReleaseEnvironment>,
    pub artifacts: Vec<ReleaseArtifact>,
    pub source: ReleaseSource,
    pub changelog: Changelog,
}

/// A public environment a version went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEnvironment {
    pub name: EnvName,
    pub first_deployed_at: DateTime<Utc>,
    /// Whether the environment runs it now.
    pub current: bool,
}

/// One artifact of a published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseArtifact {
    pub name: ArtifactName,
    pub kind: ArtifactKind,
    pub platform: Option<Platform>,
    pub size: u64,
    /// The sha256 of the file (or, for a reference, the one CI gave).
    pub digest: Digest,
    /// Its stable link, `/dl/{service}/{version}/{name}`; absent for a
    /// reference, which is not a file.
    pub download_url: Option<String>,
    /// Where a reference points.
    pub uri: Option<ReferenceUri>,
}

/// Where a version's code came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReleaseSource {
    pub repo: Option<String>,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// `{repo}/commit/{commit}` when the repository is an https URL.
    pub commit_url: Option<String>,
}

/// What changed since the previous published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changelog {
    /// The previous published version (none for the first).
    pub previous: Option<Version>,
    pub compare_url: Option<String>,
    /// The builds of the service since the previous version, newest first,
    /// this version's own build first.
    pub builds: Vec<ChangelogEntry>,
    /// Set when more builds lie in the range than are listed.
    pub truncated: bool,
}

/// One build in a changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    pub build: BuildId,
    pub version: Version,
    pub commit: Option<String>,
    pub commit_url: Option<String>,
    pub author: Option<String>,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The query of `GET /v1/releases/{service}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    pub env: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}
