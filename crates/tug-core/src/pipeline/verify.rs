//! Metric gates: an environment's `verify`, a Prometheus query whose value
//! must stay within bounds for a while before a build may be promoted out
//! of the environment, and whose value out of bounds halts a paced rollout
//! there.
//!
//! This module holds the validated gate and its checks; it asks nobody.
//! The sampler (in `tug-service`) runs the query, and
//! [`crate::policy::evaluate`] judges a promotion by what it learnt.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{format_duration, parse_duration};
use super::validation::MAX_DURATION;

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// The longest Prometheus address accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A bound of a gate as written: any TOML number. Compared by its bits so
/// that a pipeline file (which holds only finite bounds once validated)
/// is equal to itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Bound) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Bound {}

/// `verify = { prometheus = "http://…", query = "…", max = 0.01, min = 0,
/// for = "10m" }` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub prometheus: String,
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Bound>,
    #[serde(rename = "for")]
    pub hold: String,
}

/// A validated metric gate.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The Prometheus server's base address (`http://host:9090`), without
    /// credentials.
    pub prometheus: String,
    /// The PromQL instant query; its value is the first sample's.
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    /// How long the value must stay within bounds while a build runs in
    /// the environment before it may be promoted out of it.
    pub hold: Duration,
}

impl PartialEq for Verify {
    fn eq(&self, other: &Verify) -> bool {
        let bits = |b: Option<f64>| b.map(f64::to_bits);
        self.prometheus == other.prometheus
            && self.query == other.query
            && bits(self.max) == bits(other.max)
            && bits(self.min) == bits(other.min)
            && self.hold == other.hold
    }
}

impl Eq for Verify {}

impl fmt::Display for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.query, self.prometheus)?;
        match (self.min, self.max) {
            (Some(min), Some(max)) => write!(f, " within [{min}, {max}]")?,
            (Some(min), None) => write!(f, " at least {min}")?,
            (None, Some(max)) => write!(f, " at most {max}")?,
            (None, None) => {}
        }
        write!(f, " for {}", format_duration(self.hold))
    }
}

impl Verify {
    /// Reads and checks a gate as written; the error names the field
    /// (`prometheus`, `query`, `max`, `min`, `for`) and what is wrong.
    pub fn from_spec(spec: &VerifySpec) -> Result<Verify, (&'static str, String)> {
        let prometheus = check_address(&spec.prometheus).map_err(|why| ("prometheus", why))?;
        check_query(&spec.query).map_err(|why| ("query", why))?;
        let bound = |field: &'static str, b: Option<Bound>| match b {
            Some(Bound(v)) if !v.is_finite() => Err((field, format!("{v} is not a finite number"))),
            other => Ok(other.map(|b| b.0)),
        };
        let max = bound("max", spec.max)?;
        let min = bound("min", spec.min)?;
        match (min, max) {
            (None, None) => {
                return Err((
                    "max",
                    "give max, min or both: the bounds the value must stay within".into(),
                ))
            }
            (Some(min), Some(max)) if min > max => {
                return Err((
                    "min",
                    format!("{min} is above max {max}: nothing could be within bounds"),
                ))
            }
            _ => {}
        }
        let hold = match parse_duration(&spec.hold) {
            None => {
                return Err((
                    "for",
                    format!(
                        "{:?} is not a duration; write e.g. 10m, 1h30m or 45s",
                        crate::names::shown(&spec.hold)
                    ),
                ))
            }
            Some(d) if d > MAX_DURATION => {
                return Err(("for", format!("it must be at most {}", format_duration(MAX_DURATION))))
            }
            Some(d) => d,
        };
        Ok(Verify {
            prometheus,
            query: spec.query.trim().to_string(),
            max,
            min,
            hold,
        })
    }

    /// The gate as written in the pipeline file.
    pub fn to_spec(&self) -> VerifySpec {
        VerifySpec {
            prometheus: self.prometheus.clone(),
            query: self.query.clone(),
            max: self.max.map(Bound),
            min: self.min.map(Bound),
            hold: format_duration(self.hold),
        }
    }

    /// Whether `value` is within bounds; if not, why, naming the query and
    /// the value.
    pub fn judge(&self, value: f64) -> Result<(), String> {
        if value.is_nan() {
            return Err(format!("query {} returned NaN", self.query));
        }
        if let Some(max) = self.max.filter(|max| value > *max) {
            return Err(format!("query {} returned {value}, above max {max}", self.query));
        }
        if let Some(min) = self.min.filter(|min| value < *min) {
            return Err(format!("query {} returned {value}, below min {min}", self.query));
        }
        Ok(())
    }
}

/// An `http` or `https` address with a host and without credentials (a
/// pipeline file is shown to every reader), query or fragment; returned
/// without a trailing `/`.
fn check_address(text: &str) -> Result<String, String> {
    let shown = crate::names::shown(text);
    use crate::http_url::{http_url, HttpUrlError};
    let url = http_url(text, MAX_URL_BYTES).map_err(|e| match e {
        HttpUrlError::TooLong(max) => format!("the address is longer than {max} bytes"),
        HttpUrlError::NotAUrl(e) => format!("{shown:?} is not a URL: {e}; write e.g. http://127.0.0.1:9090"),
        HttpUrlError::Scheme(_) => format!("{shown:?} is not an http or https address"),
        HttpUrlError::NoHost => format!("{shown:?} names no host"),
        HttpUrlError::Credentials => {
            "the address carries credentials, which a pipeline file must not hold (every reader sees it); \
             put Prometheus behind a proxy on the server's network instead"
                .to_string()
        }
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{shown:?} has a query or fragment; give the server's base address"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A cheap check of a PromQL query: not empty, bounded, no control
/// characters but line breaks and tabs, quotes closed and brackets
/// balanced. What it lets through that Prometheus refuses shows as the
/// gate's error at the first sample, and blocks promotions.
fn check_query(text: &str) -> Result<(), String> {
    let query = text.trim();
    if query.is_empty() {
        return Err("the query is empty; write a PromQL expression, e.g. sum(rate(http_errors_total[5m]))".into());
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!("the query is longer than {MAX_QUERY_BYTES} bytes"));
    }
    if query
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err("the query contains a control character".into());
    }
    let mut open = Vec::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                loop {
                    match chars.next() {
                        None => return Err(format!("a string opened with {quote} is not closed")),
                        Some('\\') if quote != '`' => {
                            chars.next();
                        }
                        Some(q) if q == quote => break,
                        Some(_) => {}
                    }
                }
            }
            '#' => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let expected = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(expected) {
                    return Err(format!("{c} closes nothing that was opened"));
                }
            }
            _ => {}
        }
    }
    match open.last() {
        Some(c) => Err(format!("{c} is not closed")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prometheus: &str, query: &str, max: Option<f64>, min: Option<f64>, hold: &str) -> VerifySpec {
        VerifySpec {
            prometheus: prometheus.into(),
            query: query.into(),
            max: max.map(Bound),
            min: min.map(Bound),
            hold: hold.into(),
        }
    }

    fn field_of(s: VerifySpec) -> &'static str {
        Verify::from_spec(&s).unwrap_err().0
    }

    #[test]
    fn a_gate_reads_and_writes_back() {
        let s = spec(
            "http://127.0.0.1:9090/",
            " sum(rate(x_total[5m])) ",
            Some(0.01),
            None,
            "10m",
        );
        let v = Verify::from_spec(&s).unwrap();
        assert_eq!(v.prometheus, "http://127.0.0.1:9090");
        assert_eq!(v.query, "sum(rate(x_total[5m]))");
        assert_eq!(v.hold, Duration::from_secs(600));
        assert_eq!(Verify::from_spec(&v.to_spec()).unwrap(), v);
        assert_eq!(
            v.to_string(),
            "sum(rate(x_total[5m])) at http://127.0.0.1:9090 at most 0.01 for 10m"
        );
    }

    #[test]
    fn bad_gates_name_their_field() {
        let ok = "http://p:9090";
        assert_eq!(field_of(spec("ftp://p", "up", Some(1.0), None, "1m")), "prometheus");
        assert_eq!(field_of(spec("not a url", "up", Some(1.0), None, "1m")), "prometheus");
        assert_eq!(
            field_of(spec("http://u:pw@p:9090", "up", Some(1.0), None, "1m")),
            "prometheus"
        );
        assert_eq!(
            field_of(spec("http://p:9090/?q=1", "up", Some(1.0), None, "1m")),
            "prometheus"
        );
        assert_eq!(field_of(spec(ok, "  ", Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, "sum(rate(x[5m])", Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, "x{a=\"b}", Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, "x)", Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, &"x".repeat(5000), Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, "up\u{0}", Some(1.0), None, "1m")), "query");
        assert_eq!(field_of(spec(ok, "up", Some(f64::NAN), None, "1m")), "max");
        assert_eq!(field_of(spec(ok, "up", None, Some(f64::INFINITY), "1m")), "min");
        assert_eq!(field_of(spec(ok, "up", None, None, "1m")), "max");
        assert_eq!(field_of(spec(ok, "up", Some(1.0), Some(2.0), "1m")), "min");
        assert_eq!(field_of(spec(ok, "up", Some(1.0), None, "soon")), "for");
        assert_eq!(field_of(spec(ok, "up", Some(1.0), None, "9999d")), "for");
        // Brackets inside strings and comments do not count.
        assert!(Verify::from_spec(&spec(ok, "x{a=\"(\"} # )\n", Some(1.0), None, "1m")).is_ok());
    }

    #[test]
    fn values_are_judged_against_both_bounds() {
        let v = Verify::from_spec(&spec("http://p", "errors", Some(0.5), Some(0.1), "1m")).unwrap();
        assert!(v.judge(0.1).is_ok());
        assert!(v.judge(0.5).is_ok());
        assert_eq!(v.judge(0.7).unwrap_err(), "query errors returned 0.7, above max 0.5");
        assert_eq!(v.judge(0.0).unwrap_err(), "query errors returned 0, below min 0.1");
        assert!(v.judge(f64::NAN).is_err());
    }
}
