//! Validated names: services, artifacts, platforms, build ids, token names
//! and versions. Each newtype checks its input in its constructor, so code
//! that holds one never has to check again (an artifact name is never
//! absolute and never climbs out with `..`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("service name {0:?} is invalid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    Service(String),
    #[error("environment name {0:?} is invalid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    Environment(String),
    #[error("token name {0:?} is invalid: use 1 to 63 letters, digits, '-', '_' or '.'")]
    Token(String),
    #[error("artifact name {name:?} is invalid: {why}")]
    Artifact { name: String, why: &'static str },
    #[error("reference uri {uri:?} is invalid: {why}")]
    Reference { uri: String, why: &'static str },
    #[error("platform {0:?} is invalid: write it as os/arch or os/arch/variant, e.g. linux/amd64")]
    Platform(String),
    #[error("build id {0:?} is invalid: a build id looks like 0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70")]
    BuildId(String),
    #[error("version {0:?} is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.4.0 or 1.4.0-rc.1 (a leading v, as in v1.4.0, is accepted)")]
    Version(String),
    #[error("commit {0:?} is invalid: a commit must be a hexadecimal git object id of {MIN_COMMIT} to {MAX_COMMIT} digits, e.g. 4f2a9c1e; is $GIT_SHA set?")]
    Commit(String),
}

pub(crate) fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Implements `as_str`, `Display`, `FromStr`, `AsRef<str>` and serde (as a
/// plain string, validated on the way in) for a `struct Name(String)`, with
/// `parse` running `$check`. Paths are absolute so other modules of the
/// crate (`pipeline::EnvName`) can use it too.
macro_rules! string_newtype {
    ($name:ident, $check:expr) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::NameError;
            fn from_str(s: &str) -> Result<Self, $crate::names::NameError> {
                $name::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).map_err(::serde::de::Error::custom)
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<$name, $crate::names::NameError> {
                let check: fn(&str) -> Result<(), $crate::names::NameError> = $check;
                check(s)?;
                Ok($name(s.to_string()))
            }
        }
    };
}
pub(crate) use string_newtype;

/// Whether `s` is a short lowercase identifier: 1 to 63 lowercase letters,
/// digits, '-' or '_', starting with a letter or digit. Services and
/// environments are named this way so they fit in URLs, file names and
/// labels without escaping.
pub(crate) fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What is released: `teleport`, `api`, …
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);
string_newtype!(ServiceName, |s| {
    if is_slug(s) {
        Ok(())
    } else {
        Err(NameError::Service(shown(s)))
    }
});

/// A human label for an API token (`ci-main`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenName(String);
string_newtype!(TokenName, |s| {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NameError::Token(shown(s)))
    }
});

/// The longest artifact name, in bytes.
pub const MAX_ARTIFACT_NAME: usize = 255;

/// The name of one file of a build: a relative path such as
/// `linux-amd64/teleport.tar.gz`. Never absolute, never `..` or `.`, no empty
/// segments, no backslashes or control characters, at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactName(String);
string_newtype!(ArtifactName, |s| {
    let why = if s.is_empty() {
        Some("it is empty")
    } else if s.len() > MAX_ARTIFACT_NAME {
        Some("it is longer than 255 bytes")
    } else if s.starts_with('/') {
        Some("it is an absolute path; use a path relative to the build, like linux-amd64/app.tar.gz")
    } else if s.chars().any(|c| c.is_control()) {
        Some("it contains a control character")
    } else if s.contains('\\') {
        Some("it contains a backslash; separate directories with '/'")
    } else if s.split('/').any(|seg| seg == "..") {
        Some("it contains a '..' segment")
    } else if s.split('/').any(|seg| seg == ".") {
        Some("it contains a '.' segment")
    } else if s.split('/').any(|seg| seg.is_empty()) {
        Some("it contains an empty segment ('//' or a trailing '/')")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(NameError::Artifact { name: shown(s), why }),
    }
});

/// `os/arch` or `os/arch/variant`, as OCI writes platforms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform(String);
string_newtype!(Platform, |s| {
    let parts: Vec<&str> = s.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::Platform(shown(s)))
    }
});

/// A build's id: a UUID (version 7, so ids sort by creation time) in its
/// lowercase hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);
string_newtype!(BuildId, |s| {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::BuildId(shown(s)))
    }
});

/// The fewest hexadecimal digits a commit id may have: git itself never
/// abbreviates to fewer than four.
pub const MIN_COMMIT: usize = 4;

/// The most hexadecimal digits a commit id may have: a full SHA-256 object
/// id (a SHA-1 one has 40).
pub const MAX_COMMIT: usize = 64;

/// The git commit a build was made from: a full or abbreviated object id,
/// 4 to 64 hexadecimal digits, kept as written. An empty value (an unset
/// `$GIT_SHA` in CI) or anything that is not hexadecimal is refused, so a
/// build never claims a source it cannot name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(String);
string_newtype!(CommitId, |s| {
    if (MIN_COMMIT..=MAX_COMMIT).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(NameError::Commit(shown(s)))
    }
});

/// A build's version: a semantic version. One leading `v` is accepted and
/// dropped (`v14.0.2` is `14.0.2`), because tags and `tug version next`
/// write versions that way; the version is always shown and stored without
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(semver::Version);

impl Version {
    pub fn parse(s: &str) -> Result<Version, NameError> {
        semver::Version::parse(s.strip_prefix('v').unwrap_or(s))
            .map(Version)
            .map_err(|_| NameError::Version(shown(s)))
    }

    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl From<semver::Version> for Version {
    fn from(v: semver::Version) -> Version {
        Version(v)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Version {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Version::parse(s)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_relative_paths() {
        for good in [
            "teleport.tar.gz",
            "linux-amd64/teleport.tar.gz",
            "a/b/c.deb",
            "..hidden",
            "a/.b",
        ] {
            ArtifactName::parse(good).unwrap();
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "/etc/passwd",
            "../../etc/passwd",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "tab\there",
            "new\nline",
            "back\\slash",
            long.as_str(),
        ] {
            let err = ArtifactName::parse(bad).unwrap_err();
            assert!(matches!(err, NameError::Artifact { .. }), "{bad:?}: {err}");
        }
        assert!(ArtifactName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn service_names() {
        ServiceName::parse("api").unwrap();
        ServiceName::parse("teleport-ent_2").unwrap();
        for bad in ["", "Api", "-api", "a b", "a/b", &"a".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platforms() {
        Platform::parse("linux/amd64").unwrap();
        Platform::parse("linux/arm/v7").unwrap();
        for bad in ["linux", "linux/", "/amd64", "Linux/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_semver_and_ordered() {
        let a = Version::parse("1.4.0").unwrap();
        let b = Version::parse("1.10.0-rc.1").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1.10.0-rc.1");
        for bad in ["", "1.4", "vv1.4.0", "v", "V1.4.0", " 1.4.0", "1.4.0.0", "latest"] {
            let err = Version::parse(bad).unwrap_err();
            assert!(err.to_string().contains("MAJOR.MINOR.PATCH"), "{err}");
        }
    }

    #[test]
    fn a_leading_v_is_accepted_and_dropped() {
        let v = Version::parse("v14.0.2").unwrap();
        assert_eq!(v, Version::parse("14.0.2").unwrap());
        assert_eq!(v.to_string(), "14.0.2");
        let cloud = Version::parse("v16.0.0-cloud.20261122T031405.4f2a9c").unwrap();
        assert_eq!(cloud.to_string(), "16.0.0-cloud.20261122T031405.4f2a9c");
        let json: Version = serde_json::from_str("\"v1.2.3\"").unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), "\"1.2.3\"");
    }

    #[test]
    fn commits_are_hexadecimal_object_ids() {
        for good in ["4f2a", "4f2a9c1e", "ABCDEF0123", &"a".repeat(40), &"0".repeat(64)] {
            assert_eq!(CommitId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "abc",
            "not a sha!",
            "4f2a9c1g",
            " 4f2a9c1e",
            "4f2a 9c1e",
            &"a".repeat(65),
        ] {
            let err = CommitId::parse(bad).unwrap_err();
            assert!(matches!(err, NameError::Commit(_)), "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("hexadecimal git object id") && text.contains("$GIT_SHA"),
                "{text}"
            );
        }
    }

    #[test]
    fn build_ids() {
        BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
        for bad in [
            "",
            "../../etc/passwd",
            "0190C3F2-6A2B-7D4E-9F10-2B3C4D5E6F70",
            "0190c3f26a2b7d4e9f102b3c4d5e6f70",
        ] {
            assert!(BuildId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
