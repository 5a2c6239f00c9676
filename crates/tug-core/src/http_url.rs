//! The one check of an `http`/`https` address Tugboat sends requests to
//! (a webhook's endpoint, a metric gate's Prometheus): not too long, a URL,
//! one of the two schemes, a host, and no credentials in it (addresses are
//! shown in listings and pipeline files; secrets come from elsewhere).
//! Callers word the refusal for their field.

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpUrlError {
    /// Longer than the limit given, in bytes.
    TooLong(usize),
    /// Not a URL; the parser's reason.
    NotAUrl(String),
    /// A scheme other than `http` or `https`.
    Scheme(String),
    /// No host.
    NoHost,
    /// A user name or password in it.
    Credentials,
}

/// `text` as an `http` or `https` URL with a host and without
/// credentials, at most `max` bytes long.
pub fn http_url(text: &str, max: usize) -> Result<url::Url, HttpUrlError> {
    if text.len() > max {
        return Err(HttpUrlError::TooLong(max));
    }
    let u = url::Url::parse(text).map_err(|e| HttpUrlError::NotAUrl(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(HttpUrlError::Scheme(u.scheme().to_string()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(HttpUrlError::NoHost);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(HttpUrlError::Credentials);
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_addresses_with_a_host_and_no_credentials_pass() {
        assert!(http_url("https://hooks.example.com/x?y=1", 100).is_ok());
        assert!(http_url("http://127.0.0.1:9090", 100).is_ok());
        assert_eq!(http_url("https://example.com/", 5), Err(HttpUrlError::TooLong(5)));
        assert!(matches!(http_url("not a url", 100), Err(HttpUrlError::NotAUrl(_))));
        assert_eq!(
            http_url("ftp://example.com/", 100),
            Err(HttpUrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            http_url("file:///etc/passwd", 100),
            Err(HttpUrlError::Scheme("file".into()))
        );
        assert_eq!(
            http_url("https://u:p@example.com/", 100),
            Err(HttpUrlError::Credentials)
        );
        assert_eq!(http_url("https://u@example.com/", 100), Err(HttpUrlError::Credentials));
    }
}
