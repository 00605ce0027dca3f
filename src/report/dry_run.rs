//! `renew --dry-run`: one line per certificate saying what a real run would do and why.

use super::Facts;
use crate::timefmt::rfc3339;

/// The dry-run line for one certificate.
pub fn dry_run_line(f: &Facts) -> String {
    let d = &f.decision;
    let mut line = if d.due {
        format!("{}: due, would renew now: {}", f.name, d.reason)
    } else {
        format!(
            "{}: not due, renew at {}: {}",
            f.name,
            rfc3339(d.renew_at),
            d.reason
        )
    };
    if d.due
        && let Some(next) = f.record.next_attempt_at.filter(|t| *t > f.now)
    {
        line.push_str(&format!(
            " (backing off until {} after {} failures)",
            rfc3339(next),
            f.record.failures
        ));
    }
    if d.due
        && let Some(h) = &f.hold
    {
        line.push_str(&format!(" (not now: {})", h.message));
    }
    line
}
