//! Where an artifact of kind `reference` points: something CI built that
//! lives outside Tugboat's store (a machine image, an image in another
//! registry). Tugboat keeps its address and the digest CI gives, never its
//! bytes, so the address is checked here once and every layer above holds a
//! [`ReferenceUri`] that is known to be printable, bounded and of a known
//! shape.
//!
//! Two shapes are accepted:
//!
//! - a scheme form, `scheme:rest` with a lowercase scheme of letters,
//!   digits, `+`, `-` or `.` (`aws:ec2:us-east-1:ami-0abc…`,
//!   `https://example.com/app.img`, `oci://…`);
//! - a registry form, `host[:port]/path[:tag|@digest]`, whose host has a
//!   dot or a port or is `localhost` (`registry.example.com/app@sha256:…`).

use crate::names::{shown, string_newtype, NameError};

/// The longest reference, in bytes.
pub const MAX_REFERENCE_URI: usize = 2048;

/// A checked reference address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReferenceUri(String);
string_newtype!(ReferenceUri, |s| {
    let why = if s.is_empty() {
        Some("it is empty")
    } else if s.len() > MAX_REFERENCE_URI {
        Some("it is longer than 2048 bytes")
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        // Only printable ASCII: no whitespace, no control characters, and
        // no look-alike letters from other scripts in an address people
        // copy from a downloads page.
        Some("it contains whitespace, a control character or a non-ASCII character")
    } else if !(has_scheme(s) || is_registry_form(s)) {
        Some("write it as scheme:rest (aws:ec2:us-east-1:ami-0abc, https://…) or host/path (registry.example.com/app@sha256:…)")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(NameError::Reference { uri: shown(s), why }),
    }
});

impl ReferenceUri {
    /// Whether it is an `https` address a browser may follow.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

/// `scheme:rest` with a scheme as RFC 3986 writes it (lowercase here) and
/// something after the colon.
fn has_scheme(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    !rest.is_empty()
        && scheme.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'))
}

/// `host[:port]/path…` as container image references are written.
fn is_registry_form(s: &str) -> bool {
    let Some((host, path)) = s.split_once('/') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let path_ok = !path.is_empty() && path.split('/').all(|seg| !seg.is_empty() && seg != "..");
    host_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_images_and_registry_images_are_accepted() {
        for ok in [
            "aws:ec2:us-east-1:ami-0abc1234def567890",
            "registry.example.com/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "localhost:5000/team/app:1.4.0",
            "localhost/app",
            "https://images.example.com/app-1.4.0.qcow2",
            "oci://ghcr.io/x/y:1",
        ] {
            assert!(ReferenceUri::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn blanks_controls_and_shapeless_text_are_refused() {
        for bad in [
            "",
            "ami 0abc",
            "aws:ec2\n",
            "aws:ec2:\u{7f}",
            "app@sha256:x",
            "Registry/app",
            "registry.example.com/",
            "registry.example.com//app",
            "registry.example.com/../x",
            "justaword",
            "AWS:ec2",
            "aws:",
            "ａws:ec2:x",
        ] {
            assert!(ReferenceUri::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("aws:{}", "a".repeat(MAX_REFERENCE_URI));
        let err = ReferenceUri::parse(&long).unwrap_err();
        assert!(err.to_string().contains("longer than 2048"), "{err}");
    }

    #[test]
    fn only_https_links_are_followable() {
        assert!(ReferenceUri::parse("https://x.example/a").unwrap().is_https());
        assert!(!ReferenceUri::parse("aws:ec2:x").unwrap().is_https());
    }
}
