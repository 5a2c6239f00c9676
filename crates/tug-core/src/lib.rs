//! Tugboat's domain: the types every other crate speaks in and the rules that
//! need no I/O. Digests, validated names, artifacts, builds, canonical
//! manifests, roles, the derivation graph, pipelines with their policies,
//! the rollout grant rule and version numbering live here.
//!
//! This crate does no I/O, spawns nothing and depends on no runtime, database
//! or HTTP crate, so every rule in it is tested with plain unit tests.

pub mod access;
pub mod audit;
pub mod build_ref;
pub mod deb;
pub mod diff;
pub mod digest;
pub mod grant;
pub mod graph;
pub mod http_url;
pub mod manifest;
pub mod names;
pub mod oci;
pub mod pipeline;
pub mod pipeline_changes;
pub mod policy;
pub mod records;
pub mod reference;
pub mod role;
pub mod short_id;
pub mod states;
pub mod versioning;
pub mod webhook;

pub use access::{BuildAccess, Reader, ScopeError, Sight};
pub use build_ref::{BuildRef, BuildRefError, BuildTarget};
pub use digest::{Digest, DigestError, Hasher};
pub use manifest::{
    file_mode, ArtifactKind, ArtifactSpec, BlobUse, BuildManifest, BuildSource, BuildState, CiRun, DerivedFrom, Draft,
    ManifestArtifact, SealError,
};
pub use names::{ArtifactName, BuildId, CommitId, NameError, Platform, ServiceName, TokenName, Version};
pub use pipeline::{
    format_duration, parse_duration, BranchRestriction, Compatibility, EnvName, Environment, Pipeline, PipelineError,
    PipelineSpec, Rollout, ServerRule, Share, Strategy, TimeWindow,
};
pub use policy::{evaluate, BuildFacts, DeployKind, GateFact, Proposal, Verdict, Violation};
pub use reference::ReferenceUri;
pub use role::{Action, Role};
pub use versioning::{bump, next_cloud_version, Part, VersionError};
