//! The derivation graph of a build: which artifact was made from which,
//! drawn as an indented tree from the source revision (source → tarball →
//! deb → OCI image). An artifact made from several parents is drawn in full
//! under the first and referred to under the others.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ArtifactSpec, DerivedFrom, Digest};

enum Node<'a> {
    Artifact(&'a ArtifactSpec),
    External(Digest),
}

/// Renders the graph as lines of text. `source` labels the root.
pub fn render(source: &str, artifacts: &[ArtifactSpec]) -> Vec<String> {
    let mut sorted: Vec<&ArtifactSpec> = artifacts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let by_digest: BTreeMap<Digest, usize> = sorted.iter().enumerate().map(|(i, a)| (a.digest, i)).collect();
    let by_name: BTreeMap<&str, usize> = sorted.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();

    // children[parent] = artifact indices; parents are artifact indices or
    // external digests; artifacts with no known parent hang off the source.
    let mut children: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut external: BTreeMap<Digest, BTreeSet<usize>> = BTreeMap::new();
    let mut roots: BTreeSet<usize> = BTreeSet::new();
    for (i, a) in sorted.iter().enumerate() {
        let mut has_parent = false;
        for d in &a.derived_from {
            let parent = match d {
                DerivedFrom::Name(n) => by_name.get(n.as_str()).copied(),
                DerivedFrom::Digest(d) => by_digest.get(d).copied(),
            };
            match (parent, d) {
                (Some(p), _) if p != i => {
                    children.entry(p).or_default().insert(i);
                    has_parent = true;
                }
                (None, DerivedFrom::Digest(d)) => {
                    external.entry(*d).or_default().insert(i);
                    has_parent = true;
                }
                _ => {}
            }
        }
        if !has_parent {
            roots.insert(i);
        }
    }

    let mut out = vec![source.to_string()];
    let mut drawn = BTreeSet::new();
    let top: Vec<(Node<'_>, Option<usize>)> = roots
        .iter()
        .map(|&i| (Node::Artifact(sorted[i]), Some(i)))
        .chain(external.keys().map(|d| (Node::External(*d), None)))
        .collect();
    let n = top.len();
    for (k, (node, idx)) in top.into_iter().enumerate() {
        let kids: Vec<usize> = match (&node, idx) {
            (Node::Artifact(_), Some(i)) => children
                .get(&i)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            (Node::External(d), _) => external.get(d).map(|s| s.iter().copied().collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        draw(
            &mut out,
            "",
            k + 1 == n,
            &node,
            idx,
            &kids,
            &sorted,
            &children,
            &mut drawn,
        );
    }
    out
}

#[allow(clippy::too_many_arguments)] // a private recursive helper; a struct would only rename the arguments
fn draw(
    out: &mut Vec<String>,
    prefix: &str,
    last: bool,
    node: &Node<'_>,
    idx: Option<usize>,
    kids: &[usize],
    sorted: &[&ArtifactSpec],
    children: &BTreeMap<usize, BTreeSet<usize>>,
    drawn: &mut BTreeSet<usize>,
) {
    let branch = if last { "└── " } else { "├── " };
    let label = match node {
        Node::Artifact(a) => {
            let platform = a.platform.as_ref().map(|p| format!(", {p}")).unwrap_or_default();
            format!("{} ({}{platform}, {})", a.name, a.kind, a.digest.short())
        }
        Node::External(d) => format!("{d} (external)"),
    };
    if let Some(i) = idx {
        if !drawn.insert(i) {
            out.push(format!("{prefix}{branch}{} (see above)", sorted[i].name));
            return;
        }
    }
    out.push(format!("{prefix}{branch}{label}"));
    let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
    for (k, &c) in kids.iter().enumerate() {
        let grand: Vec<usize> = children
            .get(&c)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        draw(
            out,
            &child_prefix,
            k + 1 == kids.len(),
            &Node::Artifact(sorted[c]),
            Some(c),
            &grand,
            sorted,
            children,
            drawn,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArtifactKind, ArtifactName, Platform};

    fn spec(name: &str, kind: ArtifactKind, from: &[&str]) -> ArtifactSpec {
        ArtifactSpec {
            name: ArtifactName::parse(name).unwrap(),
            kind,
            platform: Some(Platform::parse("linux/amd64").unwrap()),
            size: 1,
            digest: Digest::of(name.as_bytes()),
            derived_from: from.iter().map(|f| DerivedFrom::parse(f).unwrap()).collect(),
            executable: false,
            uri: None,
        }
    }

    #[test]
    fn draws_source_to_tarball_to_deb_to_image() {
        let base = Digest::of(b"base image");
        let artifacts = vec![
            spec(
                "teleport.oci",
                ArtifactKind::Oci,
                &["teleport.deb", "teleport-arm.deb", &base.to_string()],
            ),
            spec("teleport.deb", ArtifactKind::Deb, &["teleport.tar.gz"]),
            spec("teleport-arm.deb", ArtifactKind::Deb, &[]),
            spec("teleport.tar.gz", ArtifactKind::Tarball, &[]),
        ];
        let lines = render("source github.com/x/teleport@abc123", &artifacts);
        let names: Vec<String> = lines
            .iter()
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "source github.com/x/teleport@abc123".to_string(),
                "├── teleport-arm.deb".into(),
                "│   └── teleport.oci".into(),
                "├── teleport.tar.gz".into(),
                "│   └── teleport.deb".into(),
                "│       └── teleport.oci".into(),
                format!("└── {base}"),
                "    └── teleport.oci".into(),
            ]
        );
        assert!(lines[5].ends_with("(see above)"), "{}", lines[5]);
        assert!(lines[1].contains("(deb, linux/amd64, "), "{}", lines[1]);
    }
}
