//! Time bounds of a query: RFC 3339, Unix numbers, `now`, or relative to now
//! (`-15m`, `-2h`, `-7d`, `-30s`, `-1w`).

use gossamer_schemas::time::{from_unix_integer, now_ns, parse_rfc3339};

/// `[from, to)` in nanoseconds; no bound means all time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: i64,
    pub to: i64,
}

impl Default for TimeRange {
    fn default() -> Self {
        Self { from: i64::MIN, to: i64::MAX }
    }
}

impl TimeRange {
    /// Parses optional `from` and `to`; errors name the parameter.
    pub fn parse(from: Option<&str>, to: Option<&str>, now: i64) -> Result<Self, String> {
        let bound = |name: &str, v: Option<&str>, dflt: i64| match v.map(str::trim) {
            None | Some("") => Ok(dflt),
            Some(s) => parse_time(s, now).map_err(|e| format!("invalid `{name}`: {e}")),
        };
        let r = Self { from: bound("from", from, i64::MIN)?, to: bound("to", to, i64::MAX)? };
        if r.from > r.to {
            return Err("`from` is after `to`".into());
        }
        Ok(r)
    }

    pub fn now() -> i64 {
        now_ns()
    }

    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.from && ts < self.to
    }
}

/// One time bound, in nanoseconds since the epoch.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (num, unit) = rel.split_at(split);
        if let (Ok(n), Some(mult)) = (num.parse::<i64>(), unit_ns(unit)) {
            return Ok(now.saturating_sub(n.saturating_mul(mult)));
        }
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(from_unix_integer(n));
    }
    parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not RFC 3339, a Unix time, `now` or a relative time like -15m"))
}

fn unit_ns(unit: &str) -> Option<i64> {
    const S: i64 = 1_000_000_000;
    Some(match unit {
        "s" => S,
        "m" => 60 * S,
        "h" => 3600 * S,
        "d" => 86_400 * S,
        "w" => 7 * 86_400 * S,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_absolute_and_bad_bounds() {
        let now = 1_780_000_000_000_000_000;
        assert_eq!(parse_time("-15m", now).unwrap(), now - 900_000_000_000);
        assert_eq!(parse_time("-7d", now).unwrap(), now - 7 * 86_400_000_000_000);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("2026-05-28T20:26:40Z", now).unwrap(), now);
        assert_eq!(parse_time("1780000000", now).unwrap(), now);
        assert!(parse_time("-15x", now).is_err());
        let r = TimeRange::parse(Some("-1h"), None, now).unwrap();
        assert!(r.contains(now) && !r.contains(now - 7_200_000_000_000));
        assert!(TimeRange::parse(Some("now"), Some("-1h"), now).unwrap_err().contains("after"));
        assert!(TimeRange::parse(Some("soon"), None, now).unwrap_err().starts_with("invalid `from`"));
    }
}
