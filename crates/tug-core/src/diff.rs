//! What changed between two builds: artifacts added, removed or changed
//! (by name, with old and new digest and size), and the source range
//! between their commits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ArtifactName, ArtifactSpec, BuildSource, Digest, ReferenceUri};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One artifact that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactChange {
    pub name: ArtifactName,
    pub change: Change,
    pub old_digest: Option<Digest>,
    pub new_digest: Option<Digest>,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// Where a `reference` artifact pointed and points (omitted for files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_uri: Option<ReferenceUri>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_uri: Option<ReferenceUri>,
}

/// The differing artifacts by name, and how many are the same.
pub fn artifacts(old: &[ArtifactSpec], new: &[ArtifactSpec]) -> (Vec<ArtifactChange>, u64) {
    let old: BTreeMap<&ArtifactName, &ArtifactSpec> = old.iter().map(|a| (&a.name, a)).collect();
    let new: BTreeMap<&ArtifactName, &ArtifactSpec> = new.iter().map(|a| (&a.name, a)).collect();
    let mut names: Vec<&ArtifactName> = old.keys().chain(new.keys()).copied().collect();
    names.sort();
    names.dedup();
    let mut changes = Vec::new();
    let mut same = 0;
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        let change = match (o, n) {
            (Some(o), Some(n)) if o.digest == n.digest && o.uri == n.uri => {
                same += 1;
                continue;
            }
            (Some(_), Some(_)) => Change::Changed,
            (Some(_), None) => Change::Removed,
            (None, Some(_)) => Change::Added,
            (None, None) => continue,
        };
        changes.push(ArtifactChange {
            name: name.clone(),
            change,
            old_digest: o.map(|a| a.digest),
            new_digest: n.map(|a| a.digest),
            old_size: o.map(|a| a.size),
            new_size: n.map(|a| a.size),
            old_uri: o.and_then(|a| a.uri.clone()),
            new_uri: n.and_then(|a| a.uri.clone()),
        });
    }
    (changes, same)
}

/// The commits between two builds, with a compare link for repositories
/// hosted where `<repo>/compare/<old>...<new>` shows the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRange {
    pub repo: Option<String>,
    pub old_commit: Option<String>,
    pub new_commit: Option<String>,
    pub old_branch: Option<String>,
    pub new_branch: Option<String>,
    pub compare_url: Option<String>,
}

pub fn source_range(old: &BuildSource, new: &BuildSource) -> SourceRange {
    let repo = new.repo.clone().or_else(|| old.repo.clone());
    let compare_url = match (repo.as_deref().and_then(web_base), &old.commit, &new.commit) {
        (Some(base), Some(a), Some(b)) if a != b && old.repo == new.repo => Some(format!("{base}/compare/{a}...{b}")),
        _ => None,
    };
    SourceRange {
        repo,
        old_commit: old.commit.clone(),
        new_commit: new.commit.clone(),
        old_branch: old.branch.clone(),
        new_branch: new.branch.clone(),
        compare_url,
    }
}

/// The page of one commit, `<repo>/commit/<commit>`, for a repository
/// hosted at an https address (where forges show commits there).
pub fn commit_url(source: &BuildSource) -> Option<String> {
    let base = web_base(source.repo.as_deref()?)?;
    Some(format!("{base}/commit/{}", source.commit.as_deref()?))
}

/// An https repository address without its `.git` and trailing slash: the
/// base its compare and commit pages hang from.
fn web_base(repo: &str) -> Option<&str> {
    repo.starts_with("https://")
        .then(|| repo.trim_end_matches(".git").trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArtifactKind;

    fn spec(name: &str, body: &str) -> ArtifactSpec {
        ArtifactSpec {
            name: ArtifactName::parse(name).unwrap(),
            kind: ArtifactKind::Other,
            platform: None,
            size: body.len() as u64,
            digest: Digest::of(body.as_bytes()),
            derived_from: vec![],
            executable: false,
            uri: None,
        }
    }

    #[test]
    fn names_added_removed_and_changed_artifacts() {
        let old = [spec("a", "1"), spec("b", "2"), spec("c", "3")];
        let new = [spec("a", "1"), spec("b", "22"), spec("d", "4")];
        let (changes, same) = artifacts(&old, &new);
        assert_eq!(same, 1);
        let summary: Vec<(String, Change)> = changes.iter().map(|c| (c.name.to_string(), c.change)).collect();
        assert_eq!(
            summary,
            vec![
                ("b".into(), Change::Changed),
                ("c".into(), Change::Removed),
                ("d".into(), Change::Added)
            ]
        );
        assert_eq!(changes[0].old_size, Some(1));
        assert_eq!(changes[0].new_size, Some(2));
        assert_eq!(changes[1].new_digest, None);
    }

    #[test]
    fn a_reference_that_moves_is_changed_even_with_the_same_digest() {
        let reference = |uri: &str| ArtifactSpec {
            kind: ArtifactKind::Reference,
            size: 0,
            uri: Some(ReferenceUri::parse(uri).unwrap()),
            ..spec("ami", "image")
        };
        let (changes, same) = artifacts(
            &[reference("aws:ec2:eu-west-1:ami-1")],
            &[reference("aws:ec2:eu-west-1:ami-2")],
        );
        assert_eq!(same, 0);
        assert_eq!(changes[0].change, Change::Changed);
        assert_eq!(changes[0].old_uri.as_ref().unwrap().as_str(), "aws:ec2:eu-west-1:ami-1");
        assert_eq!(changes[0].new_uri.as_ref().unwrap().as_str(), "aws:ec2:eu-west-1:ami-2");
    }

    #[test]
    fn compare_links_for_one_https_repository() {
        let old = BuildSource {
            repo: Some("https://github.com/x/api.git".into()),
            commit: Some("aaa".into()),
            ..Default::default()
        };
        let new = BuildSource {
            commit: Some("bbb".into()),
            ..old.clone()
        };
        assert_eq!(
            source_range(&old, &new).compare_url.as_deref(),
            Some("https://github.com/x/api/compare/aaa...bbb")
        );
        assert_eq!(source_range(&old, &old).compare_url, None);
        let ssh = BuildSource {
            repo: Some("git@github.com:x/api.git".into()),
            ..new.clone()
        };
        assert_eq!(source_range(&ssh, &ssh).compare_url, None);
        assert_eq!(commit_url(&new).as_deref(), Some("https://github.com/x/api/commit/bbb"));
        assert_eq!(commit_url(&ssh), None);
    }
}
