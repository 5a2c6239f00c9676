//! Short forms of identifiers, as git abbreviates commit hashes, and the
//! reading of a prefix a user typed.
//!
//! Build and token ids are UUIDv7 strings: ids made close in time share
//! their first 8 to 12 hex digits, so a fixed cut is not unique. A short id
//! here is the shortest prefix that no other id shares, computed against
//! every id there is (its neighbours in sorted order), never against the
//! rows one table happens to show; so a short id resolves to its id at the
//! moment it is shown. This module only computes; the caller finds the
//! neighbours (the database, or a complete list in memory).

use std::collections::HashMap;

/// The fewest hex digits a typed prefix must have: shorter ones name too
/// many ids to be a useful reference.
pub const MIN_PREFIX: usize = 4;

/// The fewest characters a shown short id has, however unique a shorter
/// prefix would be, so short ids have a steady look.
pub const MIN_SHOWN: usize = 8;

/// The length of the common prefix of two strings, in bytes.
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// The shortest prefix of `id` that is not a prefix of any of `others`
/// (the ids sorted next to it suffice), at least [`MIN_SHOWN`] characters
/// long, and never ending in a separator.
pub fn shorten<'a>(id: &str, others: impl IntoIterator<Item = &'a str>) -> String {
    let common = others
        .into_iter()
        .filter(|o| *o != id)
        .map(|o| common_prefix(id, o))
        .max()
        .unwrap_or(0);
    let mut len = (common + 1).max(MIN_SHOWN).min(id.len());
    // `0190c3f2-` reads as cut off; the next digit costs one character.
    while len < id.len() && id.as_bytes()[len - 1] == b'-' {
        len += 1;
    }
    while !id.is_char_boundary(len) {
        len += 1;
    }
    id[..len].to_string()
}

/// The short form of each of `ids`, when `ids` is the complete set (every
/// token, every agent): each is compared with its neighbours in sorted order.
pub fn short_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> HashMap<String, String> {
    let mut sorted: Vec<&str> = ids.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let prev = i.checked_sub(1).map(|p| sorted[p]);
            let next = sorted.get(i + 1).copied();
            (id.to_string(), shorten(id, prev.into_iter().chain(next)))
        })
        .collect()
}

/// A prefix of a UUID as a user typed it (`0190c3f2-6a2`, `0190c3f26a2`,
/// upper or lower case), in the id's own hyphenated lowercase form so it
/// can be compared with stored ids directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

/// Where a hyphenated UUID has its hyphens, counted in hex digits before it.
const HYPHENS_AFTER: [usize; 4] = [8, 12, 16, 20];

fn hyphenate(hex: &[u8]) -> String {
    let mut out = String::with_capacity(hex.len() + 4);
    for (i, &c) in hex.iter().enumerate() {
        if HYPHENS_AFTER.contains(&i) {
            out.push('-');
        }
        out.push(char::from(c));
    }
    out
}

impl IdPrefix {
    /// Reads a typed prefix: hex digits, hyphens anywhere (they are put
    /// back where the id has them), at least [`MIN_PREFIX`] and at most 32
    /// digits. `None` when it is not one.
    pub fn parse(text: &str) -> Option<IdPrefix> {
        let hex: Vec<u8> = text
            .bytes()
            .filter(|b| *b != b'-')
            .map(|b| b.to_ascii_lowercase())
            .collect();
        let ok = (MIN_PREFIX..=32).contains(&hex.len()) && hex.iter().all(|b| b.is_ascii_hexdigit());
        ok.then(|| IdPrefix(hyphenate(&hex)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &str) -> bool {
        id.starts_with(&self.0)
    }

    /// The smallest hyphenated id prefix above every id with this prefix
    /// (`0190c3f2-6a3` for `0190c3f2-6a2f`), for a range query `id >=
    /// prefix AND id < bound` that an index serves; `None` when every id
    /// above the prefix matches it (all `f`s).
    pub fn upper_bound(&self) -> Option<String> {
        let mut hex: Vec<u8> = self.0.bytes().filter(|b| *b != b'-').collect();
        while let Some(last) = hex.pop() {
            let next = match last {
                b'0'..=b'8' | b'a'..=b'e' => last + 1,
                b'9' => b'a',
                _ => continue, // an `f` carries into the digit before
            };
            hex.push(next);
            return Some(hyphenate(&hex));
        }
        None
    }
}

impl std::fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70";
    const B: &str = "0190c3f2-6a2b-7d4f-8000-000000000000";
    const C: &str = "0190c3f2-6b00-7000-8000-000000000000";

    #[test]
    fn ids_made_in_the_same_millisecond_get_prefixes_long_enough_to_differ() {
        assert_eq!(shorten(A, [B]), "0190c3f2-6a2b-7d4e");
        assert_eq!(shorten(B, [A, C]), "0190c3f2-6a2b-7d4f");
        assert_eq!(shorten(C, [B]), "0190c3f2-6b");
    }

    #[test]
    fn a_short_id_never_ends_in_a_hyphen_and_has_the_minimum_length() {
        let lone = shorten(A, []);
        assert_eq!(lone, "0190c3f2");
        // Unique after 8 hex digits: the 9th character is a hyphen.
        assert_eq!(shorten(A, ["0190c3f3-0000-7000-8000-000000000000"]), "0190c3f2");
        assert_eq!(shorten(A, ["0190c3f2-0000-7000-8000-000000000000"]), "0190c3f2-6");
        for s in [shorten(A, [B]), shorten(C, [B])] {
            assert!(!s.ends_with('-'), "{s}");
        }
    }

    #[test]
    fn short_ids_of_a_set_are_unique_and_prefixes() {
        let ids = [A, B, C, "0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f71"];
        let short = short_ids(ids);
        for id in ids {
            let s = &short[id];
            assert!(id.starts_with(s.as_str()));
            let matching = ids.iter().filter(|o| o.starts_with(s.as_str())).count();
            assert_eq!(matching, 1, "{s} names more than {id}");
        }
    }

    #[test]
    fn the_thirteen_character_cut_that_named_two_agents_alike_is_gone() {
        let a = "0190c3f2-6a2b-7aaa-8000-000000000000";
        let b = "0190c3f2-6a2b-7bbb-8000-000000000000";
        let short = short_ids([a, b]);
        assert_ne!(short[a], short[b]);
    }

    #[test]
    fn typed_prefixes_are_read_with_or_without_hyphens() {
        assert_eq!(IdPrefix::parse("0190C3F26A2B").unwrap().as_str(), "0190c3f2-6a2b");
        assert_eq!(IdPrefix::parse("0190c3f2-6a2b-7").unwrap().as_str(), "0190c3f2-6a2b-7");
        assert_eq!(IdPrefix::parse("0190").unwrap().as_str(), "0190");
        for bad in ["019", "", "prod", "0190c3f2-xyz", "sha256:abcd", &format!("{A}0")] {
            assert!(IdPrefix::parse(bad).is_none(), "{bad:?}");
        }
        assert!(IdPrefix::parse(A).unwrap().matches(A));
        assert!(!IdPrefix::parse("0190c3f2-6b").unwrap().matches(A));
    }

    #[test]
    fn the_upper_bound_is_the_next_prefix_with_carries() {
        let bound = |p: &str| IdPrefix::parse(p).unwrap().upper_bound();
        assert_eq!(bound("0190c3f2-6a2b").as_deref(), Some("0190c3f2-6a2c"));
        assert_eq!(bound("0199").as_deref(), Some("019a"));
        assert_eq!(bound("0190c3f2-6a2f").as_deref(), Some("0190c3f2-6a3"));
        assert_eq!(bound("0190cfff-f").as_deref(), Some("0190d"));
        assert_eq!(bound("ffff"), None);
        // Every id with the prefix sorts between the prefix and its bound.
        let p = IdPrefix::parse("0190c3f2-6a2").unwrap();
        let upper = p.upper_bound().unwrap();
        for id in [A, B] {
            assert!(p.as_str() <= id && id < upper.as_str(), "{id}");
        }
        assert!(C >= upper.as_str());
    }
}
