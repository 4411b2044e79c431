//! Timestamps: nanoseconds since the Unix epoch, parsed from RFC 3339 or from Unix
//! numbers in seconds, milliseconds, microseconds or nanoseconds, and printed as
//! RFC 3339 with nanoseconds in UTC.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Parses an RFC 3339 timestamp into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim()).ok()?.timestamp_nanos_opt()
}

/// Interprets a Unix timestamp by its magnitude: seconds below 1e11, milliseconds below
/// 1e14, microseconds below 1e17, nanoseconds above.
pub fn from_unix_number(n: f64) -> Option<i64> {
    if !n.is_finite() {
        return None;
    }
    let a = n.abs();
    let ns = if a < 1e11 {
        n * 1e9
    } else if a < 1e14 {
        n * 1e6
    } else if a < 1e17 {
        n * 1e3
    } else {
        n
    };
    if ns.abs() >= i64::MAX as f64 {
        return None;
    }
    Some(ns as i64)
}

/// Same as [`from_unix_number`] for integers, without losing nanosecond precision.
pub fn from_unix_integer(n: i64) -> i64 {
    let a = n.unsigned_abs();
    if a < 100_000_000_000 {
        n.saturating_mul(1_000_000_000)
    } else if a < 100_000_000_000_000 {
        n.saturating_mul(1_000_000)
    } else if a < 100_000_000_000_000_000 {
        n.saturating_mul(1_000)
    } else {
        n
    }
}

/// RFC 3339, nanoseconds, UTC: `2026-11-25T10:00:00.000000000Z`.
pub fn format_rfc3339(ns: i64) -> String {
    Utc.timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_numbers_are_read_by_magnitude() {
        let ns = 1_780_000_000_000_000_000i64;
        assert_eq!(from_unix_integer(1_780_000_000), ns);
        assert_eq!(from_unix_integer(1_780_000_000_000), ns);
        assert_eq!(from_unix_integer(1_780_000_000_000_000), ns);
        assert_eq!(from_unix_integer(ns), ns);
        assert_eq!(from_unix_number(1_780_000_000.5), Some(ns + 500_000_000));
    }

    #[test]
    fn rfc3339_round_trips_with_nanoseconds() {
        let ns = parse_rfc3339("2026-11-25T10:00:00.123456789+01:00").unwrap();
        assert_eq!(format_rfc3339(ns), "2026-11-25T09:00:00.123456789Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
