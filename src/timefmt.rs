//! How times and durations are shown to people, in one place so that logs, `status`,
//! errors and metrics all agree. A leaf: it depends on nothing in the crate.

use std::time::Duration;

use time::OffsetDateTime;

/// RFC 3339 in UTC, second precision: how every time is shown.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Formats a duration compactly for humans (`2d3h`, `45m`, `12s`).
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
            if out.len() > 4 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_second_precision() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(750);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        let t = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
        assert_eq!(format_duration(Duration::from_secs(129600)), "1d12h");
        assert_eq!(format_duration(Duration::from_secs(45 * 60)), "45m");
    }
}
