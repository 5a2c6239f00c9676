//! The OCI Distribution Specification (v1.1) as far as it is pure: the
//! grammar of repository names and tags, references (a tag or a digest),
//! the error codes, token scopes, and the parsing and checks of manifests
//! and image indexes (media types, descriptors, `subject`, `artifactType`,
//! the digests a manifest refers to). What the registry stores and serves
//! is decided in `tug-service`; this module reads bytes and says what they
//! are.
//!
//! Repositories are named `<service>/<image>`: the first component is a
//! Tugboat service, the rest names the `oci` artifact of a build.

use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::{ArtifactName, BuildId, Digest, Platform, ServiceName};

/// The largest manifest accepted, in bytes (the limit the spec suggests).
pub const MAX_MANIFEST: usize = 4 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The config media type of an image (not an artifact).
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The error codes of the specification, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
}

impl OciCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OciCode::BlobUnknown => "BLOB_UNKNOWN",
            OciCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            OciCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            OciCode::DigestInvalid => "DIGEST_INVALID",
            OciCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            OciCode::ManifestInvalid => "MANIFEST_INVALID",
            OciCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciCode::NameInvalid => "NAME_INVALID",
            OciCode::NameUnknown => "NAME_UNKNOWN",
            OciCode::SizeInvalid => "SIZE_INVALID",
            OciCode::TagInvalid => "TAG_INVALID",
            OciCode::Unauthorized => "UNAUTHORIZED",
            OciCode::Denied => "DENIED",
            OciCode::Unsupported => "UNSUPPORTED",
            OciCode::RangeInvalid => "RANGE_INVALID",
        }
    }

    /// The HTTP status the specification answers this code with.
    pub fn status(self) -> u16 {
        match self {
            OciCode::BlobUnknown | OciCode::BlobUploadUnknown | OciCode::ManifestUnknown | OciCode::NameUnknown => 404,
            OciCode::Unauthorized => 401,
            OciCode::Denied => 403,
            OciCode::Unsupported => 405,
            OciCode::RangeInvalid => 416,
            OciCode::BlobUploadInvalid
            | OciCode::DigestInvalid
            | OciCode::ManifestBlobUnknown
            | OciCode::ManifestInvalid
            | OciCode::NameInvalid
            | OciCode::SizeInvalid
            | OciCode::TagInvalid => 400,
        }
    }
}

/// A registry error: a code of the specification and a message saying
/// what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OciError {
    pub code: OciCode,
    pub message: String,
}

impl OciError {
    pub fn new(code: OciCode, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
        }
    }
}

fn invalid(message: impl Into<String>) -> OciError {
    OciError::new(OciCode::ManifestInvalid, message)
}

static NAME_COMPONENT: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$").unwrap_or_else(|e| unreachable!("{e}")));
static TAG: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap_or_else(|e| unreachable!("{e}")));

/// A repository `<service>/<image>`, checked against the specification's
/// grammar (lowercase components separated by `/`), with a service name
/// first and an image name after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    name: String,
    service: ServiceName,
    image: ArtifactName,
}

/// The longest repository name accepted.
const MAX_REPOSITORY: usize = 255;

impl Repository {
    pub fn parse(s: &str) -> Result<Repository, OciError> {
        let refuse = |why: &str| {
            OciError::new(
                OciCode::NameInvalid,
                format!(
                    "repository name {:?} is not valid: {why}; name it <service>/<image> in lowercase, like api/server",
                    s.chars().take(100).collect::<String>()
                ),
            )
        };
        if s.len() > MAX_REPOSITORY {
            return Err(refuse("it is longer than 255 bytes"));
        }
        let mut parts = s.split('/');
        let first = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            return Err(refuse("it has no image after the service"));
        }
        if let Some(bad) = std::iter::once(first)
            .chain(rest.iter().copied())
            .find(|c| !NAME_COMPONENT.is_match(c))
        {
            return Err(refuse(&format!(
                "the component {bad:?} is not lowercase letters and digits separated by '.', '_' or '-'"
            )));
        }
        let service = ServiceName::parse(first).map_err(|e| refuse(&e.to_string()))?;
        let image = ArtifactName::parse(&rest.join("/")).map_err(|e| refuse(&e.to_string()))?;
        Ok(Repository {
            name: s.to_string(),
            service,
            image,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The artifact name of the image in a build.
    pub fn image(&self) -> &ArtifactName {
        &self.image
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A tag, checked against the specification's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, OciError> {
        if TAG.is_match(s) {
            Ok(Tag(s.to_string()))
        } else {
            Err(OciError::new(
                OciCode::TagInvalid,
                format!(
                    "tag {:?} is not valid: a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                    s.chars().take(140).collect::<String>()
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The build a tag `build-<id>` names, if it is one.
    pub fn build(&self) -> Option<BuildId> {
        self.0.strip_prefix("build-").and_then(|id| BuildId::parse(id).ok())
    }

    /// The tag of a build: `build-<id>`.
    pub fn of_build(id: &BuildId) -> Tag {
        Tag(format!("build-{id}"))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest is asked for by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|e| OciError::new(OciCode::DigestInvalid, e.to_string()))
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Parses a digest from a URL, as the registry's error.
pub fn digest(s: &str) -> Result<Digest, OciError> {
    Digest::parse(s).map_err(|e| OciError::new(OciCode::DigestInvalid, e.to_string()))
}

/// What a token asks to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoAction {
    Pull,
    Push,
    Delete,
}

impl RepoAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RepoAction::Pull => "pull",
            RepoAction::Push => "push",
            RepoAction::Delete => "delete",
        }
    }
}

/// One `scope` parameter of a token request: `repository:<name>:<actions>`.
/// Actions the registry does not know (`*`, `metadata_read`) are left out;
/// scopes of other resource types are ignored (`None`).
pub fn parse_scope(s: &str) -> Result<Option<(Repository, Vec<RepoAction>)>, OciError> {
    let Some(rest) = s.strip_prefix("repository:") else {
        return Ok(None);
    };
    let (name, actions) = rest.rsplit_once(':').ok_or_else(|| {
        OciError::new(
            OciCode::Unsupported,
            format!("scope {s:?} is not repository:<name>:<actions>"),
        )
    })?;
    let repository = Repository::parse(name)?;
    let mut out: Vec<RepoAction> = actions
        .split(',')
        .filter_map(|a| match a {
            "pull" => Some(RepoAction::Pull),
            "push" => Some(RepoAction::Push),
            "delete" => Some(RepoAction::Delete),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(Some((repository, out)))
}

/// A content descriptor, as it appears in manifests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether a manifest is one image or an index of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// What a manifest says, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    pub media_type: String,
    /// `artifactType`, or an image manifest's config media type when that
    /// is not the image config's (what the referrers API reports).
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The config of an image manifest.
    pub config: Option<Digest>,
    /// Layers (image) or child manifests (index).
    pub references: Vec<Digest>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The manifest annotation that names what an image was derived from, as
/// `tug push --derived-from` does for files: artifact names of the same
/// build or digests, separated by commas.
pub const DERIVED_FROM: &str = "dev.tugboat.derived-from";

impl ParsedManifest {
    /// What the manifest's [`DERIVED_FROM`] annotation names.
    pub fn derived_from(&self) -> Result<Vec<crate::DerivedFrom>, OciError> {
        let Some(value) = self.annotations.as_ref().and_then(|a| a.get(DERIVED_FROM)) else {
            return Ok(Vec::new());
        };
        let text = value
            .as_str()
            .ok_or_else(|| invalid(format!("the annotation {DERIVED_FROM} must be a string")))?;
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| crate::DerivedFrom::parse(s).map_err(|e| invalid(format!("the annotation {DERIVED_FROM}: {e}"))))
            .collect()
    }

    /// Every digest the manifest names directly: its config, layers or
    /// children, and its subject is not one of them (a referrer may point
    /// at a manifest pushed later).
    pub fn blobs(&self) -> Vec<Digest> {
        self.config.iter().chain(&self.references).copied().collect()
    }
}

fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, OciError> {
    if d.media_type.is_empty() {
        return Err(invalid(format!("the {what} descriptor has no mediaType")));
    }
    Digest::parse(&d.digest).map_err(|e| invalid(format!("the {what} descriptor's digest: {e}")))
}

/// Parses and checks a manifest's bytes. `content_type` is the request's
/// Content-Type (the media type the client says it sends); when the body
/// names one too they must agree.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, OciError> {
    if bytes.len() > MAX_MANIFEST {
        return Err(OciError::new(
            OciCode::SizeInvalid,
            format!("the manifest is larger than {MAX_MANIFEST} bytes"),
        ));
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("the manifest is not valid JSON: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(invalid("the manifest's schemaVersion must be 2"));
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (&raw.media_type, content_type) {
        (Some(body), Some(header)) if body != header => {
            return Err(invalid(format!(
                "the manifest's mediaType {body} differs from the Content-Type {header}"
            )))
        }
        (Some(body), _) => body.clone(),
        (None, Some(header)) => header.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_LIST => ManifestKind::Index,
        other => {
            return Err(invalid(format!(
                "media type {other} is not a manifest this registry stores; use {OCI_MANIFEST} or {OCI_INDEX}"
            )))
        }
    };
    let subject = raw
        .subject
        .as_ref()
        .map(|d| descriptor_digest(d, "subject"))
        .transpose()?;
    match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(invalid(
                    "an image manifest has no \"manifests\"; send an index for those",
                ));
            }
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid("the image manifest has no config"))?;
            let config_digest = descriptor_digest(config, "config")?;
            let layers = raw.layers.unwrap_or_default();
            let references = layers
                .iter()
                .enumerate()
                .map(|(i, l)| descriptor_digest(l, &format!("layers[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let artifact_type = raw.artifact_type.or_else(|| {
                (config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG)
                    .then(|| config.media_type.clone())
            });
            Ok(ParsedManifest {
                kind,
                media_type,
                artifact_type,
                subject,
                config: Some(config_digest),
                references,
                annotations: raw.annotations,
            })
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid(
                    "an index has no config or layers; send an image manifest for those",
                ));
            }
            let children = raw.manifests.unwrap_or_default();
            let references = children
                .iter()
                .enumerate()
                .map(|(i, m)| descriptor_digest(m, &format!("manifests[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ParsedManifest {
                kind,
                media_type,
                artifact_type: raw.artifact_type,
                subject,
                config: None,
                references,
                annotations: raw.annotations,
            })
        }
    }
}

/// The platform an image config names (`os/architecture[/variant]`), if
/// it names one Tugboat can record.
pub fn config_platform(config: &[u8]) -> Option<Platform> {
    #[derive(Deserialize)]
    struct Config {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let c: Config = serde_json::from_slice(config).ok()?;
    let mut text = format!("{}/{}", c.os?, c.architecture?);
    if let Some(v) = c.variant.filter(|v| !v.is_empty()) {
        text = format!("{text}/{v}");
    }
    Platform::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn repository_names_follow_the_grammar_and_name_a_service() {
        let r = Repository::parse("api/server").unwrap();
        assert_eq!(r.service().as_str(), "api");
        assert_eq!(r.image().as_str(), "server");
        assert_eq!(
            Repository::parse("api/tools/cli").unwrap().image().as_str(),
            "tools/cli"
        );
        for bad in [
            "api",
            "Api/server",
            "api/Server",
            "api/../x",
            "api/.x",
            "api//x",
            "api/x/",
            "",
            "/x",
        ] {
            let e = Repository::parse(bad).unwrap_err();
            assert_eq!(e.code, OciCode::NameInvalid, "{bad}");
        }
        assert!(Repository::parse(&format!("api/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn tags_and_references() {
        assert!(Tag::parse("v1.2.3").is_ok());
        assert!(Tag::parse("latest").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert_eq!(Tag::parse(bad).unwrap_err().code, OciCode::TagInvalid, "{bad}");
        }
        assert!(matches!(Reference::parse(&d(1)), Ok(Reference::Digest(_))));
        assert_eq!(Reference::parse("sha256:xyz").unwrap_err().code, OciCode::DigestInvalid);
        let id = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
        assert_eq!(Tag::of_build(&id).build(), Some(id));
        assert_eq!(Tag::parse("build-x").unwrap().build(), None);
    }

    #[test]
    fn scopes() {
        let (r, a) = parse_scope("repository:api/server:push,pull").unwrap().unwrap();
        assert_eq!(r.as_str(), "api/server");
        assert_eq!(a, vec![RepoAction::Pull, RepoAction::Push]);
        assert_eq!(parse_scope("registry:catalog:*").unwrap(), None);
        assert!(parse_scope("repository:API/x:pull").is_err());
    }

    #[test]
    fn manifests_are_checked() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.example+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":3}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d(1),
            d(2),
            d(3)
        );
        let m = parse_manifest(image.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.derived_from().unwrap(), Vec::new());
        let annotated = image.replacen(
            "\"schemaVersion\":2,",
            &format!(
                "\"schemaVersion\":2,\"annotations\":{{\"{DERIVED_FROM}\":\"app.tar, {}\"}},",
                d(5)
            ),
            1,
        );
        let from = parse_manifest(annotated.as_bytes(), None)
            .unwrap()
            .derived_from()
            .unwrap();
        assert_eq!(from.len(), 2, "{from:?}");
        let bad = image.replacen(
            "\"schemaVersion\":2,",
            &format!("\"schemaVersion\":2,\"annotations\":{{\"{DERIVED_FROM}\":\"../x\"}},"),
            1,
        );
        assert_eq!(
            parse_manifest(bad.as_bytes(), None)
                .unwrap()
                .derived_from()
                .unwrap_err()
                .code,
            OciCode::ManifestInvalid
        );
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.example+json"));
        assert_eq!(m.subject.map(|s| s.to_string()), Some(d(3)));
        assert_eq!(m.blobs().len(), 2);
        assert_eq!(
            parse_manifest(image.as_bytes(), Some(OCI_INDEX)).unwrap_err().code,
            OciCode::ManifestInvalid
        );
        assert_eq!(
            parse_manifest(b"{not json", None).unwrap_err().code,
            OciCode::ManifestInvalid
        );
        assert_eq!(
            parse_manifest(br#"{"schemaVersion":1}"#, None).unwrap_err().code,
            OciCode::ManifestInvalid
        );
        let big = vec![b' '; MAX_MANIFEST + 1];
        assert_eq!(parse_manifest(&big, None).unwrap_err().code, OciCode::SizeInvalid);
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d(4)
        );
        let m = parse_manifest(index.as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.blobs().len(), 1);
        let bad_digest = image.replace(&d(2), "sha256:nothex");
        assert_eq!(
            parse_manifest(bad_digest.as_bytes(), None).unwrap_err().code,
            OciCode::ManifestInvalid
        );
    }

    #[test]
    fn platforms_from_configs() {
        assert_eq!(
            config_platform(br#"{"os":"linux","architecture":"arm64","variant":"v8"}"#).map(|p| p.to_string()),
            Some("linux/arm64/v8".into())
        );
        assert_eq!(
            config_platform(br#"{"os":"linux","architecture":"amd64"}"#).map(|p| p.to_string()),
            Some("linux/amd64".into())
        );
        assert_eq!(config_platform(b"{}"), None);
    }
}
