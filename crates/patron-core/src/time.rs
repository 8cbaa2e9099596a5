//! Event time: milliseconds since the Unix epoch, UTC.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

pub const MILLIS_PER_DAY: i64 = 86_400_000;

pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

pub fn to_rfc3339(ms: Millis) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Months since January 1970, the index the activity bitmap counts in.
pub fn month_index(ms: Millis) -> i32 {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    (t.year() - 1970) * 12 + t.month0() as i32
}

/// Days since the epoch (UTC), the key of daily totals.
pub fn day_index(ms: Millis) -> i32 {
    ms.div_euclid(MILLIS_PER_DAY) as i32
}

pub fn days_between(earlier: Millis, later: Millis) -> f64 {
    (later - earlier) as f64 / MILLIS_PER_DAY as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_and_day_index() {
        let t = parse_rfc3339("1970-02-15T00:00:00Z").unwrap();
        assert_eq!(month_index(t), 1);
        let t = parse_rfc3339("2025-01-01T00:00:00+01:00").unwrap();
        assert_eq!(
            month_index(t),
            54 * 12 + 11,
            "local 1 Jan is still 31 Dec in UTC"
        );
        assert_eq!(day_index(-1), -1);
    }
}
