//! The `status` table for humans: fixed columns, the last one free-width.

use std::time::Duration;

use super::StatusRow;
use crate::timefmt::format_duration;

/// Renders the status table for humans.
pub fn status_table(rows: &[StatusRow]) -> String {
    let remaining = |r: &StatusRow| remaining(r.remaining_seconds);
    let header = [
        "NAME",
        "DOMAINS",
        "NOT AFTER",
        "REMAINING",
        "RENEW AT",
        "STATE",
        "REASON",
        "LAST ERROR",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut err = match (&r.last_error, r.error_class) {
            (Some(e), Some(class)) => format!("[{class}] {e}"),
            (Some(e), None) => e.clone(),
            (None, _) => "-".into(),
        };
        if let Some(n) = &r.next_attempt {
            err = format!("{err} (next attempt {n})");
        }
        table.push(vec![
            r.name.clone(),
            r.domains.join(","),
            r.not_after.clone().unwrap_or_else(|| "-".into()),
            remaining(r),
            r.renew_at.clone(),
            match (&r.hold, &r.hold_until) {
                (Some(h), Some(t)) if *h == r.state => format!("{} until {t}", r.state.as_str()),
                _ => r.state.as_str().to_string(),
            },
            r.reason.clone(),
            err,
        ]);
    }
    render(&table)
}

/// Time left as the tables show it (`2d3h`, `-5h` once expired, `-` when unknown).
pub(super) fn remaining(seconds: Option<i64>) -> String {
    match seconds {
        Some(s) if s >= 0 => format_duration(Duration::from_secs(s as u64)),
        Some(s) => format!("-{}", format_duration(Duration::from_secs((-s) as u64))),
        None => "-".into(),
    }
}

/// Lays out rows (the first is the header) in columns two spaces apart, the last one
/// free-width, so every table reads the same way.
pub(super) fn render(table: &[Vec<String>]) -> String {
    let last = table.first().map_or(0, |h| h.len().saturating_sub(1));
    let widths: Vec<usize> = (0..last)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        for (c, cell) in row.iter().enumerate() {
            if c < last {
                out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}
