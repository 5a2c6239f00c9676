//! Builds and their canonical manifests.
//!
//! A sealed build is described by one JSON document whose bytes are fixed by
//! construction (fields in a set order, artifacts sorted by name, no
//! whitespace), so its sha256 names the build for good. The same function
//! produces the bytes when a build is sealed and when anyone checks it later.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ArtifactName, BuildId, Digest, Platform, ReferenceUri, ServiceName, Version};

/// The manifest format; bumped only with a migration of stored manifests.
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Binary,
    Tarball,
    Deb,
    Rpm,
    Oci,
    Helm,
    Manifest,
    #[default]
    Other,
    /// Not a file: an address outside the store (a machine image, an image
    /// in another registry) with the digest CI gave for it. It has no blob
    /// and is never downloaded.
    Reference,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 9] = [
        ArtifactKind::Binary,
        ArtifactKind::Tarball,
        ArtifactKind::Deb,
        ArtifactKind::Rpm,
        ArtifactKind::Oci,
        ArtifactKind::Helm,
        ArtifactKind::Manifest,
        ArtifactKind::Other,
        ArtifactKind::Reference,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Binary => "binary",
            ArtifactKind::Tarball => "tarball",
            ArtifactKind::Deb => "deb",
            ArtifactKind::Rpm => "rpm",
            ArtifactKind::Oci => "oci",
            ArtifactKind::Helm => "helm",
            ArtifactKind::Manifest => "manifest",
            ArtifactKind::Other => "other",
            ArtifactKind::Reference => "reference",
        }
    }

    /// Guesses a kind from a file name, for `tug push` without `--kind`.
    pub fn guess(file_name: &str) -> ArtifactKind {
        let n = file_name.to_ascii_lowercase();
        if n.ends_with(".deb") {
            ArtifactKind::Deb
        } else if n.ends_with(".rpm") {
            ArtifactKind::Rpm
        } else if n.ends_with(".tar.gz")
            || n.ends_with(".tgz")
            || n.ends_with(".tar")
            || n.ends_with(".tar.xz")
            || n.ends_with(".tar.zst")
            || n.ends_with(".zip")
        {
            ArtifactKind::Tarball
        } else if n.ends_with(".oci") || n.ends_with(".oci.tar") {
            ArtifactKind::Oci
        } else if n.ends_with(".json") || n.ends_with(".yaml") || n.ends_with(".yml") {
            ArtifactKind::Manifest
        } else {
            ArtifactKind::Other
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ArtifactKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = ArtifactKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown artifact kind {s:?}: use one of {}", all.join(", "))
        })
    }
}

/// Where a build is in its life: drafts are filled, sealed builds never
/// change, abandoned drafts were given up by `tug gc` and hold no artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Draft,
    Sealed,
    Abandoned,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Draft => "draft",
            BuildState::Sealed => "sealed",
            BuildState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<BuildState> {
        [BuildState::Draft, BuildState::Sealed, BuildState::Abandoned]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an artifact was made from: another artifact of the same build, by
/// name, or any content, by digest (a source tarball, a base image).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DerivedFrom {
    Name(ArtifactName),
    Digest(Digest),
}

impl DerivedFrom {
    /// A value starting with `sha256:` is a digest; anything else must be an
    /// artifact name.
    pub fn parse(s: &str) -> Result<DerivedFrom, crate::NameError> {
        if s.starts_with(crate::digest::PREFIX) {
            Digest::parse(s)
                .map(DerivedFrom::Digest)
                .map_err(|e| crate::NameError::Artifact {
                    name: s.chars().take(80).collect(),
                    why: digest_why(&e),
                })
        } else {
            ArtifactName::parse(s).map(DerivedFrom::Name)
        }
    }
}

fn digest_why(_: &crate::DigestError) -> &'static str {
    "it starts with sha256: but is not a digest of 64 lowercase hex digits"
}

impl fmt::Display for DerivedFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DerivedFrom::Name(n) => n.fmt(f),
            DerivedFrom::Digest(d) => d.fmt(f),
        }
    }
}

impl Serialize for DerivedFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DerivedFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DerivedFrom::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One artifact as registered in a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    pub name: ArtifactName,
    #[serde(default)]
    pub kind: ArtifactKind,
    #[serde(default)]
    pub platform: Option<Platform>,
    pub size: u64,
    pub digest: Digest,
    #[serde(default)]
    pub derived_from: Vec<DerivedFrom>,
    /// The file is a program: materialised with its executable bits
    /// (0755 rather than 0644). Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub executable: bool,
    /// Where a `reference` artifact points (and only such an artifact has
    /// one). Omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<ReferenceUri>,
}

impl ArtifactSpec {
    /// Whether the artifact is a file with a blob in the store (everything
    /// but a `reference`): what downloads, agents, gc and fsck deal with.
    pub fn has_blob(&self) -> bool {
        self.kind != ArtifactKind::Reference
    }

    /// Checks that a `reference` carries a uri and no file, and that
    /// nothing else carries a uri; the error names the field.
    pub fn check_reference(&self) -> Result<(), String> {
        match (self.kind == ArtifactKind::Reference, &self.uri) {
            (true, None) => Err(format!(
                "artifacts[{}].uri is missing: a reference artifact needs the address it points to",
                self.name
            )),
            (true, Some(_)) if self.size != 0 => Err(format!(
                "artifacts[{}].size is {}: a reference artifact has no file, so its size is 0",
                self.name, self.size
            )),
            (false, Some(_)) => Err(format!(
                "artifacts[{}].uri is set but its kind is {}: only a reference artifact has a uri",
                self.name, self.kind
            )),
            _ => Ok(()),
        }
    }
}

/// Keeps `executable: false` out of JSON, so artifacts and manifests
/// written before the field existed read and hash the same.
fn is_false(b: &bool) -> bool {
    !*b
}

/// The mode a file of an artifact gets where it is written out (`tug pull`,
/// an agent's release): only the permission bits a release may sensibly
/// carry, never setuid, setgid or sticky. A `binary` artifact is a program
/// whether or not it was pushed with its executable bit.
pub fn file_mode(kind: ArtifactKind, executable: bool) -> u32 {
    if executable || kind == ArtifactKind::Binary {
        0o755
    } else {
        0o644
    }
}

/// An artifact of a build that needs a blob: what fsck names for a blob
/// that is damaged or missing, so an operator knows which files to push
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobUse {
    pub digest: Digest,
    pub build: BuildId,
    pub service: ServiceName,
    pub version: Version,
    pub state: BuildState,
    pub artifact: ArtifactName,
}

/// Where a build's code came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BuildSource {
    pub author: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub message: Option<String>,
    pub repo: Option<String>,
    pub tag: Option<String>,
}

/// The CI run that produced a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CiRun {
    pub builder_image: Option<Digest>,
    pub url: Option<String>,
}

/// One artifact as the manifest records it: lineage resolved to digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestArtifact {
    pub derived_from: Vec<Digest>,
    pub digest: Digest,
    /// Omitted when false, so the manifests of builds sealed before it
    /// existed keep their bytes and digests.
    #[serde(default, skip_serializing_if = "is_false")]
    pub executable: bool,
    pub kind: ArtifactKind,
    pub name: ArtifactName,
    pub platform: Option<Platform>,
    pub size: u64,
    /// Where a `reference` artifact points; omitted for files, so manifests
    /// of builds without references keep their bytes and digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<ReferenceUri>,
}

/// The immutable description of a sealed build. Field order is alphabetical
/// and is part of the format: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildManifest {
    pub artifacts: Vec<ManifestArtifact>,
    pub build: BuildId,
    pub ci: CiRun,
    pub created_at: String,
    pub schema: u32,
    pub service: ServiceName,
    pub source: BuildSource,
    pub version: Version,
}

/// Why a draft cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("expected artifacts are missing: {}; push them, then seal again", join(.0))]
    MissingExpected(Vec<ArtifactName>),
    #[error("artifact {artifact} is derived from {missing}, which is not an artifact of this build; push it or name it by digest")]
    UnknownDerivation {
        artifact: ArtifactName,
        missing: ArtifactName,
    },
    #[error("a build needs at least one artifact before it is sealed; push files into it first")]
    Empty,
}

fn join(names: &[ArtifactName]) -> String {
    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// Everything a draft holds when it is sealed.
pub struct Draft<'a> {
    pub id: &'a BuildId,
    pub service: &'a ServiceName,
    pub version: &'a Version,
    pub source: &'a BuildSource,
    pub ci: &'a CiRun,
    pub created_at: &'a str,
    pub expected: &'a [ArtifactName],
    pub artifacts: &'a [ArtifactSpec],
}

impl BuildManifest {
    /// Checks a draft against the sealing rules and builds its manifest.
    pub fn seal(draft: Draft<'_>) -> Result<BuildManifest, SealError> {
        let by_name: BTreeMap<&ArtifactName, &ArtifactSpec> = draft.artifacts.iter().map(|a| (&a.name, a)).collect();
        let missing: Vec<ArtifactName> = draft
            .expected
            .iter()
            .filter(|e| !by_name.contains_key(e))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            return Err(SealError::MissingExpected(missing));
        }
        if draft.artifacts.is_empty() {
            return Err(SealError::Empty);
        }
        let mut artifacts = Vec::with_capacity(by_name.len());
        for a in by_name.values() {
            let mut derived = BTreeSet::new();
            for d in &a.derived_from {
                match d {
                    DerivedFrom::Digest(d) => {
                        derived.insert(*d);
                    }
                    DerivedFrom::Name(n) => match by_name.get(n) {
                        Some(parent) => {
                            derived.insert(parent.digest);
                        }
                        None => {
                            return Err(SealError::UnknownDerivation {
                                artifact: a.name.clone(),
                                missing: n.clone(),
                            })
                        }
                    },
                }
            }
            artifacts.push(ManifestArtifact {
                derived_from: derived.into_iter().collect(),
                digest: a.digest,
                executable: a.executable,
                kind: a.kind,
                name: a.name.clone(),
                platform: a.platform.clone(),
                size: a.size,
                uri: a.uri.clone(),
            });
        }
        Ok(BuildManifest {
            artifacts,
            build: draft.id.clone(),
            ci: draft.ci.clone(),
            created_at: draft.created_at.to_string(),
            schema: MANIFEST_SCHEMA,
            service: draft.service.clone(),
            source: draft.source.clone(),
            version: draft.version.clone(),
        })
    }

    /// The canonical bytes: compact JSON in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing plain structs, strings and integers cannot fail.
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, body: &[u8], from: &[&str]) -> ArtifactSpec {
        ArtifactSpec {
            name: ArtifactName::parse(name).unwrap(),
            kind: ArtifactKind::guess(name),
            platform: Some(Platform::parse("linux/amd64").unwrap()),
            size: body.len() as u64,
            digest: Digest::of(body),
            derived_from: from.iter().map(|f| DerivedFrom::parse(f).unwrap()).collect(),
            executable: false,
            uri: None,
        }
    }

    fn seal(artifacts: &[ArtifactSpec], expected: &[&str]) -> Result<BuildManifest, SealError> {
        let id = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
        let service = ServiceName::parse("api").unwrap();
        let version = Version::parse("1.4.0").unwrap();
        let expected: Vec<ArtifactName> = expected.iter().map(|e| ArtifactName::parse(e).unwrap()).collect();
        BuildManifest::seal(Draft {
            id: &id,
            service: &service,
            version: &version,
            source: &BuildSource {
                branch: Some("master".into()),
                ..Default::default()
            },
            ci: &CiRun::default(),
            created_at: "2026-11-22T00:00:00Z",
            expected: &expected,
            artifacts,
        })
    }

    #[test]
    fn manifest_is_independent_of_registration_order() {
        let a = spec("app.tar.gz", b"tar", &[]);
        let b = spec("app.deb", b"deb", &["app.tar.gz"]);
        let m1 = seal(&[a.clone(), b.clone()], &[]).unwrap();
        let m2 = seal(&[b, a], &[]).unwrap();
        assert_eq!(m1.canonical_bytes(), m2.canonical_bytes());
        assert_eq!(m1.digest(), m2.digest());
        assert_eq!(m1.artifacts[0].name.as_str(), "app.deb");
        assert_eq!(m1.artifacts[0].derived_from, vec![Digest::of(b"tar")]);
    }

    #[test]
    fn canonical_bytes_are_pinned() {
        let m = seal(&[spec("a.bin", b"a", &[])], &[]).unwrap();
        let text = String::from_utf8(m.canonical_bytes()).unwrap();
        assert!(text.starts_with(r#"{"artifacts":[{"derived_from":[],"digest":"sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb","kind":"other","name":"a.bin","platform":"linux/amd64","size":1}],"build":"0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70","ci":{"builder_image":null,"url":null},"created_at":"2026-11-22T00:00:00Z","schema":1,"service":"api","source":{"author":null,"branch":"master","#), "{text}");
        let back: BuildManifest = serde_json::from_slice(&m.canonical_bytes()).unwrap();
        assert_eq!(back, m);
    }

    /// Builds sealed before artifacts carried their executable bit keep
    /// their manifest bytes, so their manifest digests stay valid; an
    /// executable artifact says so, in the field's alphabetical place.
    #[test]
    fn executable_is_in_the_manifest_only_when_set() {
        let plain = seal(&[spec("a.bin", b"a", &[])], &[]).unwrap();
        let text = String::from_utf8(plain.canonical_bytes()).unwrap();
        assert!(!text.contains("executable"), "{text}");
        let old: BuildManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(old.digest(), plain.digest());

        let mut program = spec("a.bin", b"a", &[]);
        program.executable = true;
        let exec = seal(&[program], &[]).unwrap();
        let text = String::from_utf8(exec.canonical_bytes()).unwrap();
        assert!(
            text.contains(r#""digest":"sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb","executable":true,"kind":"other""#),
            "{text}"
        );
        assert_ne!(exec.digest(), plain.digest());
        let back: BuildManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, exec);
    }

    /// A manifest written before references existed reads and hashes the
    /// same (no `uri` appears for files); a reference carries its uri after
    /// `size`, in the field's alphabetical place.
    #[test]
    fn uri_is_in_the_manifest_only_for_references() {
        let plain = seal(&[spec("a.bin", b"a", &[])], &[]).unwrap();
        let text = String::from_utf8(plain.canonical_bytes()).unwrap();
        assert!(!text.contains("uri"), "{text}");
        let old: BuildManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(old.digest(), plain.digest());
        assert_eq!(old.canonical_bytes(), text.as_bytes());

        let mut ami = spec("ami", b"", &[]);
        ami.kind = ArtifactKind::Reference;
        ami.uri = Some(ReferenceUri::parse("aws:ec2:us-east-1:ami-0abc").unwrap());
        ami.digest = Digest::of(b"image");
        let with = seal(&[spec("a.bin", b"a", &[]), ami], &[]).unwrap();
        let text = String::from_utf8(with.canonical_bytes()).unwrap();
        assert!(
            text.contains(r#""kind":"reference","name":"ami","platform":"linux/amd64","size":0,"uri":"aws:ec2:us-east-1:ami-0abc"}"#),
            "{text}"
        );
        let back: BuildManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn references_need_a_uri_and_no_file() {
        let mut r = spec("ami", b"", &[]);
        r.kind = ArtifactKind::Reference;
        assert!(r
            .check_reference()
            .unwrap_err()
            .contains("artifacts[ami].uri is missing"));
        r.uri = Some(ReferenceUri::parse("aws:ec2:x").unwrap());
        assert!(r.check_reference().is_ok());
        assert!(!r.has_blob());
        r.size = 3;
        assert!(r.check_reference().unwrap_err().contains("artifacts[ami].size is 3"));
        let mut f = spec("a.bin", b"a", &[]);
        assert!(f.check_reference().is_ok());
        f.uri = r.uri.clone();
        assert!(f
            .check_reference()
            .unwrap_err()
            .contains("only a reference artifact has a uri"));
    }

    #[test]
    fn file_modes_carry_only_permission_bits() {
        assert_eq!(file_mode(ArtifactKind::Other, false), 0o644);
        assert_eq!(file_mode(ArtifactKind::Tarball, true), 0o755);
        assert_eq!(file_mode(ArtifactKind::Binary, false), 0o755);
        for kind in ArtifactKind::ALL {
            for exec in [false, true] {
                assert_eq!(file_mode(kind, exec) & !0o777, 0, "{kind} {exec}");
            }
        }
    }

    #[test]
    fn seal_names_missing_expected_artifacts() {
        let err = seal(&[spec("a.bin", b"a", &[])], &["b.deb", "a.bin", "c.rpm"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected artifacts are missing: b.deb, c.rpm; push them, then seal again"
        );
    }

    #[test]
    fn seal_refuses_unknown_derivations_and_empty_builds() {
        let err = seal(&[spec("a.deb", b"a", &["a.tar.gz"])], &[]).unwrap_err();
        assert!(matches!(err, SealError::UnknownDerivation { .. }));
        assert_eq!(seal(&[], &[]).unwrap_err(), SealError::Empty);
    }

    #[test]
    fn kinds_parse_and_guess() {
        assert_eq!("deb".parse::<ArtifactKind>().unwrap(), ArtifactKind::Deb);
        assert!("zip".parse::<ArtifactKind>().unwrap_err().contains("binary, tarball"));
        assert_eq!(ArtifactKind::guess("x/teleport-v1.tar.gz"), ArtifactKind::Tarball);
    }
}
