//! Time windows: when nothing is deployed to an environment (its freeze
//! windows) and when its agents may update (its maintenance windows). One
//! type serves both; what a window means is up to the policy that holds it.
//!
//! A window is weekly ("Sat 00:00 - Mon 06:00"), daily on some days
//! ("Mon-Fri 02:00 - 04:00"), both in the wall-clock time of a time zone,
//! or once (two RFC 3339 instants). It reads no clock: it is asked about an
//! instant the caller passes in.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveTime, SecondsFormat, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::spec::WindowSpec;
use crate::names::shown;

/// A span of time that recurs every week or every day, or comes once: a
/// freeze window (nothing is deployed, unless an admin overrides it) or a
/// maintenance window (agents update only inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeWindow {
    /// Every week from `start` to `end`, in the wall-clock time of `tz`, so
    /// "Sat 00:00 - Mon 06:00 Europe/Berlin" follows Berlin's daylight saving
    /// time. When `end` comes before `start` in the week (Monday first) the
    /// window wraps over the week's end.
    Weekly {
        start: (Weekday, NaiveTime),
        end: (Weekday, NaiveTime),
        tz: Tz,
    },
    /// On each of `days` from `start` to `end` in the wall-clock time of
    /// `tz` ("Mon-Fri 02:00 - 04:00"); when `end` comes before `start` the
    /// window runs past midnight into the next day.
    Daily {
        /// Bit `n` is the weekday `n` days from Monday.
        days: u8,
        start: NaiveTime,
        end: NaiveTime,
        tz: Tz,
    },
    /// Once, from `from` (included) to `until` (excluded).
    Once { from: DateTime<Utc>, until: DateTime<Utc> },
}

const ALL_DAYS: u8 = 0b111_1111;

fn day_bit(d: Weekday) -> u8 {
    1 << d.num_days_from_monday()
}

/// Reads `Mon-Fri`, `Sat,Sun`, `Mon,Wed-Fri` or `Fri-Mon` (a range wraps
/// over the week's end).
fn parse_days(text: &str) -> Result<u8, String> {
    let weekday = |t: &str| -> Result<Weekday, String> {
        t.trim().parse().map_err(|_| {
            format!(
                "{:?} is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
                shown(t)
            )
        })
    };
    let mut days = 0;
    for item in text.split(',') {
        match item.split_once('-') {
            None => days |= day_bit(weekday(item)?),
            Some((from, to)) => {
                let (mut d, to) = (weekday(from)?, weekday(to)?);
                days |= day_bit(d);
                while d != to {
                    d = d.succ();
                    days |= day_bit(d);
                }
            }
        }
    }
    Ok(days)
}

/// `Mon-Fri`, `Sat,Sun`, … as [`parse_days`] reads them; empty for every day.
fn days_text(days: u8) -> String {
    if days == ALL_DAYS {
        return String::new();
    }
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 7 {
        if days & (1 << n) == 0 {
            n += 1;
            continue;
        }
        let start = n;
        while n + 1 < 7 && days & (1 << (n + 1)) != 0 {
            n += 1;
        }
        let name = |i: u32| weekday_text(Weekday::try_from(i as u8).unwrap_or(Weekday::Mon));
        parts.push(if n > start {
            format!("{}-{}", name(start), name(n))
        } else {
            name(start).to_string()
        });
        n += 1;
    }
    parts.join(",")
}

fn parse_time(time: &str) -> Result<NaiveTime, String> {
    let valid_shape = time.len() == 5 && time.as_bytes()[2] == b':';
    NaiveTime::parse_from_str(time, "%H:%M")
        .ok()
        .filter(|_| valid_shape)
        .ok_or_else(|| format!("{:?} is not a time of day: use 24-hour HH:MM, e.g. 06:00", shown(time)))
}

fn weekday_text(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "Mon",
        Weekday::Tue => "Tue",
        Weekday::Wed => "Wed",
        Weekday::Thu => "Thu",
        Weekday::Fri => "Fri",
        Weekday::Sat => "Sat",
        Weekday::Sun => "Sun",
    }
}

/// Seconds since Monday 00:00 of a weekday and time of day.
fn week_second(day: Weekday, time: NaiveTime) -> u32 {
    day.num_days_from_monday() * 86_400 + time.num_seconds_from_midnight()
}

fn parse_day_time(text: &str) -> Result<(Weekday, NaiveTime), String> {
    let mut parts = text.split_whitespace();
    let (Some(day), Some(time), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{:?} is not a weekday and a time: write e.g. \"Sat 00:00\"",
            shown(text)
        ));
    };
    // chrono reads Mon..Sun and Monday..Sunday, in any case.
    let day: Weekday = day.parse().map_err(|_| {
        format!(
            "{:?} is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
            shown(day)
        )
    })?;
    Ok((day, parse_time(time)?))
}

fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "{field} {:?} is not an RFC 3339 time ({e}): write e.g. 2026-12-24T00:00:00Z",
                shown(text)
            )
        })
}

impl TimeWindow {
    /// Reads a recurring window in time zone `tz` (an IANA name such as
    /// `Europe/Berlin`, or `UTC`): one span of the week, `"Sat 00:00 - Mon
    /// 06:00"`, or the same hours on some days, `"Mon-Fri 02:00 - 04:00"`,
    /// `"Sat,Sun 10:00 - 12:00"`, `"22:00 - 02:00"` (every day).
    pub fn weekly(text: &str, tz: &str) -> Result<TimeWindow, String> {
        // The two ends are split at the '-' after the start's time of day; a
        // '-' before it belongs to a range of days ("Mon-Fri").
        let split = text
            .char_indices()
            .filter(|(_, c)| *c == '-')
            .map(|(i, _)| i)
            .find(|&i| text[..i].trim_end().ends_with(|c: char| c.is_ascii_digit()))
            .or_else(|| text.find('-'))
            .ok_or_else(|| {
                format!(
                    "{:?} has no '-': write e.g. \"Sat 00:00 - Mon 06:00\" or \"Mon-Fri 02:00 - 04:00\"",
                    shown(text)
                )
            })?;
        let (start, end) = (text[..split].trim(), text[split + 1..].trim());
        let tz = || -> Result<Tz, String> {
            tz.parse().map_err(|_| {
                format!(
                    "{:?} is not a known time zone: use an IANA name such as Europe/Berlin, or UTC",
                    shown(tz)
                )
            })
        };
        if end.split_whitespace().count() == 1 {
            // The same hours on some days (or every day).
            let (days, time) = match start.rsplit_once(char::is_whitespace) {
                Some((days, time)) => (parse_days(days.trim())?, time),
                None => (ALL_DAYS, start),
            };
            let (start, end) = (parse_time(time)?, parse_time(end)?);
            if start == end {
                return Err("it starts and ends at the same time".to_string());
            }
            return Ok(TimeWindow::Daily {
                days,
                start,
                end,
                tz: tz()?,
            });
        }
        let start = parse_day_time(start)?;
        let end = parse_day_time(end)?;
        if start == end {
            return Err("it starts and ends at the same time".to_string());
        }
        Ok(TimeWindow::Weekly { start, end, tz: tz()? })
    }

    /// Reads a window as written in the pipeline file.
    pub fn from_spec(spec: &WindowSpec) -> Result<TimeWindow, String> {
        match (&spec.weekly, &spec.from, &spec.until) {
            (Some(weekly), None, None) => {
                TimeWindow::weekly(weekly, spec.tz.as_deref().unwrap_or("UTC"))
            }
            (None, Some(from), Some(until)) => {
                if spec.tz.is_some() {
                    return Err("tz applies only to weekly windows; write from and until with an offset, e.g. 2026-12-24T00:00:00+01:00".to_string());
                }
                let from = parse_instant("from", from)?;
                let until = parse_instant("until", until)?;
                if from >= until {
                    return Err("from must be before until".to_string());
                }
                Ok(TimeWindow::Once { from, until })
            }
            (None, None, None) => Err(
                "it has neither weekly nor from and until: write { weekly = \"Sat 00:00 - Mon 06:00\", tz = \"Europe/Berlin\" } or { from = \"…\", until = \"…\" }"
                    .to_string(),
            ),
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err("a one-off window needs both from and until".to_string())
            }
            (Some(_), _, _) => {
                Err("it has both weekly and from/until: write them as two windows".to_string())
            }
        }
    }

    /// The window as written in the pipeline file.
    pub fn to_spec(&self) -> WindowSpec {
        match self {
            TimeWindow::Weekly { start, end, tz } => WindowSpec {
                weekly: Some(format!(
                    "{} {} - {} {}",
                    weekday_text(start.0),
                    start.1.format("%H:%M"),
                    weekday_text(end.0),
                    end.1.format("%H:%M")
                )),
                tz: Some(tz.name().to_string()),
                ..WindowSpec::default()
            },
            TimeWindow::Daily { days, start, end, tz } => WindowSpec {
                weekly: Some(
                    format!(
                        "{} {} - {}",
                        days_text(*days),
                        start.format("%H:%M"),
                        end.format("%H:%M")
                    )
                    .trim_start()
                    .to_string(),
                ),
                tz: Some(tz.name().to_string()),
                ..WindowSpec::default()
            },
            TimeWindow::Once { from, until } => WindowSpec {
                from: Some(from.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                until: Some(until.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                ..WindowSpec::default()
            },
        }
    }

    /// Whether `at` falls inside the window (start included, end excluded).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        match self {
            TimeWindow::Weekly { start, end, tz } => {
                // Compare in the zone's wall-clock time: a window written as
                // "Sat 00:00" means midnight in Berlin in summer and winter.
                let local = at.with_timezone(tz);
                let now = week_second(local.weekday(), local.time());
                let start = week_second(start.0, start.1);
                let end = week_second(end.0, end.1);
                if start < end {
                    start <= now && now < end
                } else {
                    now >= start || now < end
                }
            }
            TimeWindow::Daily { days, start, end, tz } => {
                let local = at.with_timezone(tz);
                let (today, time) = (day_bit(local.weekday()), local.time());
                if start < end {
                    days & today != 0 && *start <= time && time < *end
                } else {
                    // Past midnight: the window began on the day before.
                    (days & today != 0 && time >= *start)
                        || (days & day_bit(local.weekday().pred()) != 0 && time < *end)
                }
            }
            TimeWindow::Once { from, until } => *from <= at && at < *until,
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.to_spec();
        match self {
            TimeWindow::Weekly { .. } | TimeWindow::Daily { .. } => {
                write!(f, "{} {}", spec.weekly.unwrap_or_default(), spec.tz.unwrap_or_default())
            }
            TimeWindow::Once { .. } => write!(
                f,
                "{} - {}",
                spec.from.unwrap_or_default(),
                spec.until.unwrap_or_default()
            ),
        }
    }
}

impl Serialize for TimeWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = WindowSpec::deserialize(d)?;
        TimeWindow::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

/// How a window that failed to parse is named in an error: as written.
pub(crate) fn written(spec: &WindowSpec) -> String {
    match (&spec.weekly, &spec.from, &spec.until) {
        (Some(weekly), _, _) => format!("{:?}", shown(weekly)),
        (None, from, until) => format!(
            "from {:?} until {:?}",
            shown(from.as_deref().unwrap_or("")),
            shown(until.as_deref().unwrap_or(""))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::utc;

    #[test]
    fn weekly_window_wraps_over_the_week_end() {
        let w = TimeWindow::weekly("Sat 00:00 - Mon 06:00", "UTC").unwrap();
        // 2026-11-20 is a Friday.
        assert!(!w.contains(utc(2026, 11, 20, 23, 59)));
        assert!(w.contains(utc(2026, 11, 21, 0, 0))); // Sat
        assert!(w.contains(utc(2026, 11, 22, 12, 0))); // Sun
        assert!(w.contains(utc(2026, 11, 23, 5, 59))); // Mon
        assert!(!w.contains(utc(2026, 11, 23, 6, 0)));
        assert!(!w.contains(utc(2026, 11, 25, 12, 0))); // Wed

        // Within one week, and full day names in any case.
        let w = TimeWindow::weekly("friday 16:00-monday 08:00", "UTC").unwrap();
        assert_eq!(w.to_string(), "Fri 16:00 - Mon 08:00 UTC");
        let w = TimeWindow::weekly("Tue 09:00 - Tue 10:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 24, 9, 30)));
        assert!(!w.contains(utc(2026, 11, 24, 10, 0)));
        assert!(!w.contains(utc(2026, 11, 17, 8, 59)));
        // Ending before it starts on the same day covers almost the whole week.
        let w = TimeWindow::weekly("Tue 10:00 - Tue 09:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 20, 12, 0)));
        assert!(!w.contains(utc(2026, 11, 24, 9, 30)));
    }

    #[test]
    fn weekly_window_follows_daylight_saving_time() {
        let w = TimeWindow::weekly("Sat 00:00 - Mon 06:00", "Europe/Berlin").unwrap();
        // Winter (CET, UTC+1): Saturday 00:00 in Berlin is Friday 23:00 UTC.
        assert!(!w.contains(utc(2026, 1, 9, 22, 59)));
        assert!(w.contains(utc(2026, 1, 9, 23, 0)));
        assert!(w.contains(utc(2026, 1, 12, 4, 59)));
        assert!(!w.contains(utc(2026, 1, 12, 5, 0)));
        // Summer (CEST, UTC+2): it starts at Friday 22:00 UTC.
        assert!(!w.contains(utc(2026, 7, 10, 21, 59)));
        assert!(w.contains(utc(2026, 7, 10, 22, 0)));
        assert!(!w.contains(utc(2026, 7, 13, 4, 0)));
        // The weekend of the switch to summer time (Sunday 2026-03-29,
        // 02:00 CET becomes 03:00 CEST): Saturday starts at UTC+1, Monday
        // ends at UTC+2.
        assert!(w.contains(utc(2026, 3, 27, 23, 0)));
        assert!(w.contains(utc(2026, 3, 29, 1, 30)));
        assert!(w.contains(utc(2026, 3, 30, 3, 59)));
        assert!(!w.contains(utc(2026, 3, 30, 4, 0)));
    }

    #[test]
    fn one_off_window() {
        let spec = WindowSpec {
            from: Some("2026-12-24T00:00:00+01:00".into()),
            until: Some("2026-12-27T00:00:00Z".into()),
            ..WindowSpec::default()
        };
        let w = TimeWindow::from_spec(&spec).unwrap();
        assert_eq!(w.to_string(), "2026-12-23T23:00:00Z - 2026-12-27T00:00:00Z");
        assert!(!w.contains(utc(2026, 12, 23, 22, 59)));
        assert!(w.contains(utc(2026, 12, 23, 23, 0)));
        assert!(w.contains(utc(2026, 12, 26, 23, 59)));
        assert!(!w.contains(utc(2026, 12, 27, 0, 0)));
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"from": "2026-12-23T23:00:00Z", "until": "2026-12-27T00:00:00Z"})
        );
        assert_eq!(serde_json::from_value::<TimeWindow>(json).unwrap(), w);
    }

    #[test]
    fn daily_windows_cover_the_same_hours_on_their_days() {
        let w = TimeWindow::weekly("Mon-Fri 02:00 - 04:00", "UTC").unwrap();
        // 2026-11-23 is a Monday.
        assert!(w.contains(utc(2026, 11, 23, 2, 0)));
        assert!(w.contains(utc(2026, 11, 27, 3, 59)), "Friday");
        assert!(!w.contains(utc(2026, 11, 23, 4, 0)), "the end is excluded");
        assert!(!w.contains(utc(2026, 11, 28, 3, 0)), "Saturday");
        assert_eq!(w.to_string(), "Mon-Fri 02:00 - 04:00 UTC");
        // Past midnight: Friday 22:00 to Saturday 02:00 belongs to Friday.
        let w = TimeWindow::weekly("Fri 22:00 - 02:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 28, 1, 0)));
        assert!(!w.contains(utc(2026, 11, 27, 1, 0)), "Friday 01:00 follows Thursday");
        let every_day = TimeWindow::weekly("22:00 - 02:00", "Europe/Berlin").unwrap();
        assert!(every_day.contains(utc(2026, 11, 25, 22, 30)), "23:30 in Berlin");
        assert!(!every_day.contains(utc(2026, 11, 25, 20, 30)));
        let w = TimeWindow::weekly("Sat,Sun 10:00 - 12:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 29, 11, 0)) && !w.contains(utc(2026, 11, 27, 11, 0)));
        assert_eq!(w.to_spec().weekly.as_deref(), Some("Sat-Sun 10:00 - 12:00"));
        let w = TimeWindow::weekly("Fri-Mon 10:00 - 12:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 23, 11, 0)) && !w.contains(utc(2026, 11, 24, 11, 0)));
        for (text, why) in [
            ("Mon-Fro 02:00 - 04:00", "\"Fro\" is not a weekday"),
            ("Mon-Fri 02:00 - 4pm", "is not a time of day"),
            ("Mon 02:00 - 02:00", "same time"),
        ] {
            let err = TimeWindow::weekly(text, "UTC").unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
