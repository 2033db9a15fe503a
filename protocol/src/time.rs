//! Timestamps and durations as they appear on the wire and in `drover.toml`.
//!
//! The protocol never reads the clock: callers pass `now` in. A [`Timestamp`] is whole
//! seconds since the Unix epoch, written as RFC 3339 in UTC (`2026-11-27T12:00:00Z`),
//! one spelling per instant so that signed documents are easy to read and compare.
//! A [`Duration`] is written the way operators type it: `500ms`, `30s`, `2m`, `1h`, `7d`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::NameError;

/// An instant, in whole seconds since 1970-01-01T00:00:00Z, between the years 1970 and 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(i64);

/// The last second of the year 9999: timestamps past it have no four-digit year.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from Unix seconds, clamped to the representable range.
    pub fn from_unix(seconds: i64) -> Timestamp {
        Timestamp(seconds.clamp(0, MAX_UNIX_SECONDS))
    }

    /// Converts a clock reading taken by the caller (the protocol never reads the clock).
    pub fn from_system(time: std::time::SystemTime) -> Timestamp {
        let seconds = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX));
        Timestamp::from_unix(seconds)
    }

    /// The calendar date (year, month 1-12, day 1-31) in UTC.
    pub fn date(self) -> (i32, u8, u8) {
        let (year, month, day) = civil_from_days(self.0.div_euclid(86_400));
        let narrow = |value: i64| u8::try_from(value).expect("month and day fit in u8");
        (
            i32::try_from(year).expect("years up to 9999 fit in i32"),
            narrow(month),
            narrow(day),
        )
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// This instant moved forward by `duration` (whole seconds; saturating).
    pub fn plus(self, duration: Duration) -> Timestamp {
        let seconds = i64::try_from(duration.as_millis() / 1000).unwrap_or(i64::MAX);
        Timestamp::from_unix(self.0.saturating_add(seconds))
    }

    /// This instant moved back by `duration` (whole seconds; saturating at the epoch).
    pub fn minus(self, duration: Duration) -> Timestamp {
        let seconds = i64::try_from(duration.as_millis() / 1000).unwrap_or(i64::MAX);
        Timestamp::from_unix(self.0.saturating_sub(seconds))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01: the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl FromStr for Timestamp {
    type Err = NameError;

    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ`.
    fn from_str(text: &str) -> Result<Timestamp, NameError> {
        let error = || {
            NameError::new(
                "timestamp",
                text,
                "RFC 3339 in UTC with whole seconds, e.g. 2026-11-27T12:00:00Z",
            )
        };
        let bytes = text.as_bytes();
        if bytes.len() != 20 {
            return Err(error());
        }
        let shape_ok = bytes.iter().enumerate().all(|(index, &b)| match index {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
        if !shape_ok {
            return Err(error());
        }
        let number = |range: std::ops::Range<usize>| -> i64 {
            bytes[range].iter().fold(0, |acc, &b| acc * 10 + i64::from(b - b'0'))
        };
        let (year, month, day) = (number(0..4), number(5..7), number(8..10));
        let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
        if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(error());
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(error());
        }
        let days = days_from_civil(year, month, day);
        Ok(Timestamp(days * 86_400 + hour * 3600 + minute * 60 + second))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let second_of_day = self.0.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60
        )
    }
}

impl TryFrom<String> for Timestamp {
    type Error = NameError;
    fn try_from(text: String) -> Result<Timestamp, NameError> {
        text.parse()
    }
}

impl From<Timestamp> for String {
    fn from(value: Timestamp) -> String {
        value.to_string()
    }
}

/// A span of time in milliseconds, written `250ms`, `30s`, `2m`, `1h` or `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(u64);

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(seconds: u64) -> Duration {
        Duration(seconds.saturating_mul(1000))
    }

    /// A duration of milliseconds.
    pub const fn from_millis(millis: u64) -> Duration {
        Duration(millis)
    }

    /// The length in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The equivalent standard library duration.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl FromStr for Duration {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Duration, NameError> {
        let error = || {
            NameError::new(
                "duration",
                text,
                "a whole number followed by ms, s, m, h or d, e.g. 30s",
            )
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(error)?;
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() || digits.len() > 12 {
            return Err(error());
        }
        let amount: u64 = digits.parse().map_err(|_| error())?;
        let unit_millis = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(error()),
        };
        Ok(Duration(amount.checked_mul(unit_millis).ok_or_else(error)?))
    }
}

impl fmt::Display for Duration {
    /// The largest unit that divides the value exactly, so `90s` stays `90s` and `120s` is `2m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
        for (size, suffix) in units {
            if self.0 != 0 && self.0.is_multiple_of(size) {
                return write!(f, "{}{suffix}", self.0 / size);
            }
        }
        if self.0 == 0 {
            f.write_str("0s")
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl TryFrom<String> for Duration {
    type Error = NameError;
    fn try_from(text: String) -> Result<Duration, NameError> {
        text.parse()
    }
}

impl From<Duration> for String {
    fn from(value: Duration) -> String {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:34:56Z", 951_827_696),
            ("2026-11-27T12:00:00Z", 1_795_780_800),
            ("9999-12-31T23:59:59Z", MAX_UNIX_SECONDS),
        ];
        for (text, unix) in cases {
            let parsed: Timestamp = text.parse().expect(text);
            assert_eq!(parsed.unix(), unix, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "",
            "2026-11-27",
            "2026-11-27T12:00:00",
            "2026-11-27T12:00:00+00:00",
            "2026-11-27t12:00:00z",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T12:60:00Z",
            "2026-11-27T12:00:60Z",
            "1969-12-31T23:59:59Z",
            "2026-11-27T12:00:00.5Z",
            "+026-11-27T12:00:00Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for (text, millis, canonical) in [
            ("250ms", 250, "250ms"),
            ("30s", 30_000, "30s"),
            ("120s", 120_000, "2m"),
            ("90s", 90_000, "90s"),
            ("1h", 3_600_000, "1h"),
            ("7d", 604_800_000, "7d"),
            ("0s", 0, "0s"),
        ] {
            let parsed: Duration = text.parse().expect(text);
            assert_eq!(parsed.as_millis(), millis);
            assert_eq!(parsed.to_string(), canonical);
        }
        for bad in ["", "s", "30", "30 s", "-1s", "1.5s", "30sec", "1w", "9999999999999d"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn timestamp_text_round_trips(seconds in 0..=MAX_UNIX_SECONDS) {
            let timestamp = Timestamp::from_unix(seconds);
            let text = timestamp.to_string();
            prop_assert_eq!(text.parse::<Timestamp>().expect("own output parses"), timestamp);
        }

        #[test]
        fn duration_text_round_trips(millis in 0u64..1_000_000_000_000) {
            let duration = Duration::from_millis(millis);
            prop_assert_eq!(duration.to_string().parse::<Duration>().expect("own output parses"), duration);
        }
    }
}
