//! The read-only views: `status` (table and JSON), `renew --dry-run` lines and metrics.
//! Each is a pure function of one [`Facts`] per certificate, gathered from the disk and
//! the state directory without the network, without the lock and without writing.

mod dry_run;
pub mod metrics;
mod status;
mod table;

use time::OffsetDateTime;

use crate::config::{CertConfig, Config};
use crate::inventory::{self, OnDisk};
use crate::policy::{self, AriWindow, Decision};
use crate::state::{CertRecord, StateDir};

pub use dry_run::dry_run_line;
pub use status::{RowTimes, StatusRow, status_row};
pub use table::status_table;

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
}

/// Gathers the facts for one certificate. Blocking: reads files and state only.
pub fn facts(cert: &CertConfig, state: &StateDir, now: OffsetDateTime) -> Facts {
    let (record, record_error) = match state.load(&cert.name) {
        Ok(r) => (r, None),
        Err(e) => (CertRecord::default(), Some(e.to_string())),
    };
    let disk = inventory::inspect(&cert.files(), &cert.domains, now);
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
    certs.into_iter().map(|c| facts(c, &state, now)).collect()
}

/// The status rows of every certificate.
pub fn status(cfg: &Config, now: OffsetDateTime) -> Vec<StatusRow> {
    gather(cfg, &cfg.certs, now)
        .iter()
        .map(status_row)
        .collect()
}
