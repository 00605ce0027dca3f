//! The read-only views: `status` (table and JSON), `renew --dry-run` lines and metrics.
//! Each is a pure function of one [`Facts`] per certificate, gathered from the disk and
//! the state directory without the network, without the lock and without writing.

mod dry_run;
mod fleet;
pub mod metrics;
mod status;
mod table;
mod watched;

use time::OffsetDateTime;

use crate::budget;
use crate::config::{CertConfig, Config, OrderLimit};
use crate::inventory::{self, OnDisk};
use crate::policy::{self, AriWindow, Decision};
use crate::state::{CertRecord, StateDir};

pub use dry_run::dry_run_line;
pub use fleet::{add_fleet, add_fleet_local, cluster_line, cluster_table, fleet_lines};
pub use status::{FleetCell, RowTimes, StatusRow, status_row};
pub use table::status_table;
pub use watched::{Row, WatchRow, json_rows, watch_row, watch_table, watched};

/// Everything the views know about one certificate at one moment.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The certificate's name.
    pub name: String,
    /// Its configured names.
    pub domains: Vec<String>,
    /// Its record (the default when none could be read).
    pub record: CertRecord,
    /// Why the record could not be read, if it could not.
    pub record_error: Option<String>,
    /// What is installed.
    pub disk: OnDisk,
    /// The cached ARI window for the installed certificate.
    pub ari: Option<AriWindow>,
    /// The renewal decision.
    pub decision: Decision,
    /// Problems with the files that do not stop renewal (a key readable by others).
    pub warnings: Vec<String>,
    /// When the facts were gathered.
    pub now: OffsetDateTime,
    /// What keeps the certificate from being ordered although nothing failed.
    pub hold: Option<Hold>,
}

/// A limit on orders in force for one certificate (see [`crate::budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// `deferred` (the CA's order budget) or `breaker` (the per-certificate breaker).
    pub kind: crate::policy::CertState,
    /// When the next order is allowed.
    pub until: OffsetDateTime,
    /// The same sentence the pass logged.
    pub message: String,
}

/// The breaker, if open, else a deferral still in force under the current budget.
fn hold(
    cert: &CertConfig,
    rec: &CertRecord,
    limit: Option<OrderLimit>,
    now: OffsetDateTime,
) -> Option<Hold> {
    use crate::policy::CertState;
    if let Some(t) = budget::breaker(&rec.issued_at, cert.max_orders_per_cert, now) {
        return Some(Hold {
            kind: CertState::Breaker,
            until: t.reopens,
            message: t.message(&cert.name),
        });
    }
    let (limit, until) = (limit?, rec.deferred_until.filter(|t| *t > now)?);
    Some(Hold {
        kind: CertState::Deferred,
        until,
        message: budget::deferred_message(&limit, until),
    })
}

/// Gathers the facts for one certificate; `limit` is the CA's order budget in force.
/// Blocking: reads files and state only.
pub fn facts(
    cert: &CertConfig,
    state: &StateDir,
    limit: Option<OrderLimit>,
    now: OffsetDateTime,
) -> Facts {
    let (record, record_error) = match state.load(&cert.name) {
        Ok(r) => (r, None),
        Err(e) => (CertRecord::default(), Some(e.to_string())),
    };
    let disk = crate::pass::look_at_files(cert, record.verified_set.as_deref(), now).disk;
    let ari = record.ari_for(disk.info().map(|i| i.serial.as_str()));
    let decision = policy::decide_cert(
        &cert.name,
        cert.renew_before,
        &disk,
        ari.as_ref(),
        record.ari_hold_until,
        now,
    );
    Facts {
        hold: hold(cert, &record, limit, now),
        name: cert.name.clone(),
        domains: cert.domains.clone(),
        record,
        record_error,
        disk,
        ari,
        decision,
        warnings: inventory::mode_warnings(&cert.files(), cert.key_mode),
        now,
    }
}

/// The facts for the given certificates, reading the state directory read-only (it need
/// not exist).
pub fn gather<'a>(
    cfg: &Config,
    certs: impl IntoIterator<Item = &'a CertConfig>,
    now: OffsetDateTime,
) -> Vec<Facts> {
    let state = StateDir::open_readonly(&cfg.state_dir);
    let limit = cfg.acme.max_new_orders;
    let certs: Vec<&CertConfig> = certs.into_iter().collect();
    // Parsing keys and certificates is CPU work: spread it over the cores, in order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = certs.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        let parts: Vec<_> = certs
            .chunks(chunk)
            .map(|part| {
                let state = &state;
                s.spawn(move || {
                    part.iter()
                        .map(|c| facts(c, state, limit, now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("a status worker panicked"))
            .collect()
    })
}

/// The status rows of every certificate.
pub fn status(cfg: &Config, now: OffsetDateTime) -> Vec<StatusRow> {
    gather(cfg, &cfg.certs, now)
        .iter()
        .map(status_row)
        .collect()
}
