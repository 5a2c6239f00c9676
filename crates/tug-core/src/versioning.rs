//! Version numbering: the next cloud version of a service cut from its main
//! branch (Teleport RFD 134, "cloud-first deployment"), and plain semver
//! bumps.
//!
//! [`Version`] is semver without a leading `v`; these functions return that
//! form (`15.0.0-cloud.20261122T031405.4f2a9c`) and the CLI prints cloud
//! versions with a leading `v` (`v15.0.0-cloud.20261122T031405.4f2a9c`) as
//! the RFD writes them. Nothing here reads the clock or the repository: the
//! time and the commit are parameters.

use chrono::{DateTime, Utc};

use crate::names::{shown, Version};

/// Which part of a version [`bump`] increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Major,
    Minor,
    Patch,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("commit {0:?} is not a git commit hash: give at least 6 hexadecimal digits")]
    Commit(String),
    #[error("the newest stable major version {0} has no successor")]
    MajorOverflow(u64),
}

/// The version of a cloud release cut at `now` from `commit`:
/// `<major>.0.0-cloud.<UTC YYYYMMDDTHHMMSS>.<first 6 hex digits of commit>`,
/// where major is one more than the newest stable (self-hosted) major
/// release, or 1 if there is none yet.
///
/// The timestamp has a fixed width and contains a `T`, so semver compares it
/// as text and that order is the order in time: a later cut is a higher
/// version. The commit prefix only tells apart cuts made in the same second.
///
/// Semver forbids leading zeros in an all-digit identifier, so a prefix such
/// as `012345` would make the version invalid. In that case only, the prefix
/// is written `g012345` (the `g` for "git", as `git describe` does), which
/// keeps the six digits and makes the identifier alphanumeric. All other
/// prefixes are written as the RFD shows them.
pub fn next_cloud_version(
    newest_stable_major: Option<u64>,
    now: DateTime<Utc>,
    commit: &str,
) -> Result<Version, VersionError> {
    let major = match newest_stable_major {
        None => 1,
        Some(m) => m.checked_add(1).ok_or(VersionError::MajorOverflow(m))?,
    };
    let valid_commit = commit.len() >= 6 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_commit {
        return Err(VersionError::Commit(shown(commit)));
    }
    let mut short = commit[..6].to_ascii_lowercase();
    if short.starts_with('0') && short.bytes().all(|b| b.is_ascii_digit()) {
        short.insert(0, 'g');
    }
    let pre = format!("cloud.{}.{short}", now.format("%Y%m%dT%H%M%S"));
    // Every piece was checked above, so this always parses; the error is
    // returned rather than unwrapped so that a mistake here cannot panic a
    // server.
    let pre = semver::Prerelease::new(&pre).map_err(|_| VersionError::Commit(shown(commit)))?;
    Ok(Version::from(semver::Version {
        major,
        minor: 0,
        patch: 0,
        pre,
        build: semver::BuildMetadata::EMPTY,
    }))
}

/// The next version after `v` in `part`, with the lower parts reset and any
/// prerelease and build metadata dropped: `1.4.2-rc.1` bumped in `Minor` is
/// `1.5.0`. A part already at `u64::MAX` stays there rather than wrapping
/// (no real version gets there).
pub fn bump(v: &Version, part: Part) -> Version {
    let s = v.semver();
    let (major, minor, patch) = match part {
        Part::Major => (s.major.saturating_add(1), 0, 0),
        Part::Minor => (s.major, s.minor.saturating_add(1), 0),
        Part::Patch => (s.major, s.minor, s.patch.saturating_add(1)),
    };
    Version::from(semver::Version::new(major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn cloud_version_follows_rfd_134() {
        let v = next_cloud_version(
            Some(14),
            at(2026, 11, 22, 3, 14, 5),
            "4f2a9c81d0e6b7a5c3f2e1d0c9b8a7f6e5d4c3b2",
        )
        .unwrap();
        assert_eq!(v.to_string(), "15.0.0-cloud.20261122T031405.4f2a9c");
        // The RFD's own example.
        let v = next_cloud_version(Some(13), at(2023, 7, 12, 12, 36, 33), "aabbcc").unwrap();
        assert_eq!(v.to_string(), "14.0.0-cloud.20230712T123633.aabbcc");
    }

    #[test]
    fn cloud_version_without_a_stable_release_is_major_1() {
        let v = next_cloud_version(None, at(2026, 1, 2, 3, 4, 5), "ABCDEF0").unwrap();
        assert_eq!(v.to_string(), "1.0.0-cloud.20260102T030405.abcdef");
    }

    #[test]
    fn cloud_version_with_an_all_digit_commit_prefix_is_still_semver() {
        let v = next_cloud_version(Some(14), at(2026, 11, 22, 3, 14, 5), "0123456789").unwrap();
        assert_eq!(v.to_string(), "15.0.0-cloud.20261122T031405.g012345");
        Version::parse(&v.to_string()).unwrap();
        // All digits without a leading zero is a valid numeric identifier.
        let v = next_cloud_version(Some(14), at(2026, 11, 22, 3, 14, 5), "1234567").unwrap();
        assert_eq!(v.to_string(), "15.0.0-cloud.20261122T031405.123456");
    }

    #[test]
    fn later_cloud_cuts_are_higher_versions() {
        let a = next_cloud_version(Some(14), at(2026, 11, 22, 3, 14, 5), "ffffff").unwrap();
        let b = next_cloud_version(Some(14), at(2026, 11, 22, 3, 14, 6), "000001").unwrap();
        let c = next_cloud_version(Some(14), at(2026, 12, 1, 0, 0, 0), "123456").unwrap();
        assert!(a < b && b < c);
        // A new stable major release moves cloud versions past it.
        let stable15 = Version::parse("15.0.0").unwrap();
        let d = next_cloud_version(Some(15), at(2026, 12, 1, 0, 0, 0), "abcdef").unwrap();
        assert!(c < stable15 && stable15 < d);
    }

    #[test]
    fn cloud_version_refuses_a_bad_commit() {
        let now = at(2026, 1, 1, 0, 0, 0);
        for bad in ["", "abc", "abcde", "xyzxyzxyz", "abc def", "ééééééé"] {
            let err = next_cloud_version(Some(1), now, bad).unwrap_err();
            assert!(matches!(err, VersionError::Commit(_)), "{bad:?}");
            assert!(err.to_string().contains("6 hexadecimal"), "{err}");
        }
        assert_eq!(
            next_cloud_version(Some(u64::MAX), now, "abcdef"),
            Err(VersionError::MajorOverflow(u64::MAX))
        );
    }

    #[test]
    fn bump_resets_lower_parts_and_drops_prerelease_and_build() {
        let v = Version::parse("1.4.2-rc.1+build.7").unwrap();
        assert_eq!(bump(&v, Part::Major).to_string(), "2.0.0");
        assert_eq!(bump(&v, Part::Minor).to_string(), "1.5.0");
        assert_eq!(bump(&v, Part::Patch).to_string(), "1.4.3");
        let v = Version::parse("0.9.9").unwrap();
        assert_eq!(bump(&v, Part::Minor).to_string(), "0.10.0");
        let cloud = Version::parse("15.0.0-cloud.20261122T031405.4f2a9c").unwrap();
        assert_eq!(bump(&cloud, Part::Patch).to_string(), "15.0.1");
    }
}
