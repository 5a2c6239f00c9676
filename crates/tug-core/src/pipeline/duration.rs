//! Durations as a pipeline writes them: `30s`, `30m`, `1h`, `2d`, `1h30m`.
//!
//! How long a duration may be is a limit of the pipeline, checked where a
//! policy is read ([`super::MAX_DURATION`]).

use std::time::Duration;

/// Parses a duration written as whole days, hours, minutes and seconds, in
/// that order, each at most once: `30s`, `30m`, `1h`, `2d`, `1h30m`. Zero is
/// refused: every duration in a pipeline (soak, approval timeout) means
/// "wait this long", and a zero there is a mistake.
pub fn parse_duration(text: &str) -> Option<Duration> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed; units must descend so that
    // "1h30m" has one spelling and "30m1h" is refused as a likely typo.
    let mut next_unit = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().ok()?;
        let unit = after.chars().next()?;
        let position = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)?;
        let seconds = UNITS[next_unit + position].1;
        next_unit += position + 1;
        total = total.checked_add(number.checked_mul(seconds)?)?;
        rest = &after[unit.len_utf8()..];
    }
    if total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// Writes a duration the way [`parse_duration`] reads it, in its shortest
/// canonical form (`90m` becomes `1h30m`). Fractions of a second are
/// dropped; zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_canonically() {
        for (text, secs, canonical) in [
            ("30s", 30, "30s"),
            ("30m", 1800, "30m"),
            ("1h", 3600, "1h"),
            ("2d", 172_800, "2d"),
            ("1h30m", 5400, "1h30m"),
            ("90m", 5400, "1h30m"),
            ("1d2h3m4s", 93_784, "1d2h3m4s"),
            ("48h", 172_800, "2d"),
            ("0h5m", 300, "5m"),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs), "{text}");
            assert_eq!(format_duration(d), canonical, "{text}");
        }
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "1h1h",
            "30m1h",
            "1 h",
            " 1h",
            "1h ",
            "-1h",
            "+1h",
            "1.5h",
            "0s",
            "0h0m",
            "1H",
            "99999999999999999d",
            "1hh",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s");
    }
}
