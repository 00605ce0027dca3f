//! The rows of watched certificates (`[[watch]]`): in `status --json` beside the managed
//! ones (state `watched`), in their own table for humans, and in the metrics. A view over
//! [`crate::watched::look`], like the rest of `report`.

use serde::Serialize;
use time::OffsetDateTime;

use super::StatusRow;
use crate::config::Config;
use crate::timefmt::rfc3339;
use crate::watched::{self, Watched};

/// One watched file (or endpoint) in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchRow {
    /// The watch's name.
    pub name: String,
    /// The file (or the pattern that matched nothing).
    pub source: String,
    /// Always `watched`: nothing is ever ordered for it.
    pub state: &'static str,
    /// The leaf's DNS names.
    pub domains: Vec<String>,
    /// The leaf's serial.
    pub serial: Option<String>,
    /// The leaf's not-after.
    pub not_after: Option<String>,
    /// Seconds until then (negative once expired).
    pub remaining_seconds: Option<i64>,
    /// When it enters `warn_before`.
    pub warn_at: Option<String>,
    /// It is within `warn_before` of expiry (or expired): the `expiring` condition.
    pub expiring: bool,
    /// Why the file gives no certificate (unreadable, not PEM, a FIFO, no match).
    pub error: Option<String>,
    /// not_after as Unix seconds, for metrics.
    #[serde(skip)]
    pub not_after_unix: Option<i64>,
}

/// The row of one watched file.
pub fn watch_row(w: &Watched, now: OffsetDateTime) -> WatchRow {
    let info = w.found.as_ref().ok();
    WatchRow {
        name: w.name.clone(),
        source: w.source.clone(),
        state: "watched",
        domains: info.map(|i| i.sans.clone()).unwrap_or_default(),
        serial: info.map(|i| i.serial.clone()),
        not_after: info.map(|i| rfc3339(i.not_after)),
        remaining_seconds: info.map(|i| (i.not_after - now).whole_seconds()),
        warn_at: w.warn_at.map(rfc3339),
        expiring: w.expiring(now),
        error: w.found.as_ref().err().cloned(),
        not_after_unix: info.map(|i| i.not_after.unix_timestamp()),
    }
}

/// The rows of every `[[watch]]`. Blocking: reads the watched files.
pub fn watched(cfg: &Config, now: OffsetDateTime) -> Vec<WatchRow> {
    cfg.watches
        .iter()
        .flat_map(|w| watched::look(w, &cfg.state_dir))
        .map(|w| watch_row(&w, now))
        .collect()
}

/// One row of `status --json`: a managed certificate or a watched one.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Row<'a> {
    /// A `[[cert]]`.
    Cert(&'a StatusRow),
    /// A `[[watch]]` file.
    Watched(&'a WatchRow),
}

/// The rows of `status --json`: the managed certificates, then the watched ones.
pub fn json_rows<'a>(rows: &'a [StatusRow], watched: &'a [WatchRow]) -> Vec<Row<'a>> {
    rows.iter()
        .map(Row::Cert)
        .chain(watched.iter().map(Row::Watched))
        .collect()
}

/// The table of watched certificates for humans (empty when there are none).
pub fn watch_table(rows: &[WatchRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut table = vec![
        [
            "WATCH",
            "SOURCE",
            "NOT AFTER",
            "REMAINING",
            "WARN AT",
            "STATE",
            "PROBLEM",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        let problem = match (&r.error, r.expiring) {
            (Some(e), _) => e.clone(),
            (None, true) => "expiring: within warn_before".into(),
            (None, false) => "-".into(),
        };
        table.push(vec![
            r.name.clone(),
            r.source.clone(),
            r.not_after.clone().unwrap_or_else(|| "-".into()),
            super::table::remaining(r.remaining_seconds),
            r.warn_at.clone().unwrap_or_else(|| "-".into()),
            r.state.into(),
            problem,
        ]);
    }
    super::table::render(&table)
}
