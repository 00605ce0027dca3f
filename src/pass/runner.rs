//! What a long-lived process keeps between certificate passes: the config, the state
//! directory, the HTTP-01 responders, the ACME account, the order slots and the clock.
//! `renew` builds one per run; the daemon keeps one until the config changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tracing::warn;

use super::{Fingerprint, Outcome, PassError};
use crate::acme::{Acme, AcmeError};
use crate::challenge::Responders;
use crate::clock::SharedClock;
use crate::config::{CaConfig, CertConfig, Config};
use crate::state::{CaRecord, CertRecord, StateDir, StateError};

/// See the module documentation.
pub struct Runner {
    /// The configuration in force.
    pub cfg: Arc<Config>,
    /// The state directory.
    pub state: StateDir,
    /// Built-in HTTP-01 responders (kept running once started).
    pub responders: Responders,
    /// Where "now" comes from.
    pub clock: SharedClock,
    /// The state directory as owner markers name it, resolved once per runner.
    pub(super) owner_id: std::path::PathBuf,
    /// What the files held when last read, so the daemon does not re-read unchanged ones.
    pub(super) disk_cache: Arc<super::disk::DiskCache>,
    /// One connection per CA directory (the primary and any fallback a certificate moved
    /// to), so a fallback's account and failures never mix with the primary's.
    acme: Caches,
    /// The connections for optional lookups (ARI of certificates that are not due), per
    /// CA: tried once, without retries, and a failure shared by every certificate of the
    /// pass, so a CA that is down costs a no-op pass no time and one log line.
    quick: Caches,
    /// At most `acme.max_concurrent_orders` orders at once, so a fleet of certificates does not hit
    /// the CA all at the same moment. Shared with the runner that replaces this one on a
    /// config reload, so tasks still running under the old config count too.
    pub(super) orders: Arc<Semaphore>,
    /// Fleet mode: the etcd coordination (`None` without `[cluster]`).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// Connections keyed by CA directory; the outer lock is held only to find the slot.
type Caches = std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<AcmeCache>>>>;

/// The slot for one CA directory, made empty on first use.
fn slot(caches: &Caches, directory: &str) -> Arc<tokio::sync::Mutex<AcmeCache>> {
    let mut map = caches.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(directory.to_string())
        .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(AcmeCache::Empty)))
        .clone()
}

enum AcmeCache {
    Empty,
    Ready(Arc<Acme>),
    /// A failed connect is shared for a short while, so a pass over many certificates
    /// against a down CA costs one attempt, not one per certificate.
    Failed(Arc<AcmeError>, tokio::time::Instant),
}

/// How long a failed connection attempt is reused before trying again.
const CONNECT_FAILURE_TTL: Duration = Duration::from_secs(30);

/// The result of one certificate's pass, and when it next needs attention.
#[derive(Debug, Clone)]
pub struct CertResult {
    /// What happened.
    pub outcome: Outcome,
    /// When to look at this certificate again (renewal time, retry time or ARI poll).
    pub next_wake: OffsetDateTime,
    /// A new set was installed (so file events from this pass are our own).
    pub installed: bool,
    /// What the certificate's files held when this pass last read or wrote them: the
    /// daemon compares a later file event against it, so only a real change wakes it.
    pub fingerprint: Option<Fingerprint>,
}

impl CertResult {
    /// A failed pass for this certificate.
    pub(super) fn failed(cert: &CertConfig, summary: String, next_wake: OffsetDateTime) -> Self {
        Self {
            outcome: Outcome {
                name: cert.name.clone(),
                ok: false,
                summary,
            },
            next_wake,
            installed: false,
            fingerprint: None,
        }
    }
}

impl Runner {
    /// A runner over a validated config and an opened state directory.
    pub fn new(
        cfg: Arc<Config>,
        state: StateDir,
        responders: Responders,
        clock: SharedClock,
    ) -> Self {
        let orders = Arc::new(Semaphore::new(cfg.acme.max_concurrent_orders));
        let owner_id = crate::owner::canonical_state_dir(state.root());
        Self {
            owner_id,
            disk_cache: Arc::default(),
            cfg,
            state,
            responders,
            clock,
            acme: Caches::default(),
            quick: Caches::default(),
            orders,
            fleet: None,
        }
    }

    /// The runner in fleet mode (or not, with `None`).
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Fleet>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// The runner for a reloaded config: a fresh ACME connection, but the same order slots,
    /// CA-record lock and clock, so old and new tasks together stay within the limits.
    pub fn reconfigured(&self, cfg: Arc<Config>) -> Self {
        Self {
            owner_id: self.owner_id.clone(),
            // A reloaded config may change domains: looks are redone.
            disk_cache: Arc::default(),
            cfg,
            state: self.state.clone(),
            responders: self.responders.clone(),
            clock: self.clock.clone(),
            acme: Caches::default(),
            quick: Caches::default(),
            orders: self.orders.clone(),
            // `[cluster]` is read at start: a changed one takes a restart.
            fleet: self.fleet.clone(),
        }
    }

    /// The time now, by the runner's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Saves a certificate's record off the async workers (the save fsyncs).
    pub(super) async fn save(&self, name: &str, rec: CertRecord) -> Result<(), StateError> {
        let (state, name) = (self.state.clone(), name.to_string());
        tokio::task::spawn_blocking(move || state.save(&name, &rec))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Io {
                    path: self.state.root().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Updates the record of a CA (see [`StateDir::update_ca`]); a failed save is logged,
    /// since the facts are only a cache.
    pub(super) fn update_ca(&self, directory: &str, change: impl FnOnce(&mut CaRecord)) {
        if let Err(e) = self.state.update_ca(directory, change) {
            warn!("cannot record what was learned about the CA: {e}");
        }
    }

    /// Drops the account the CA no longer knows (kept as `<file>.lost` for inspection), so
    /// the next connection creates a new one.
    pub(super) async fn forget_account(&self, directory: &str) {
        // Both connections hold the account the CA no longer knows: the quick one
        // (ARI) would otherwise be handed out again by `acme_at`.
        for caches in [&self.acme, &self.quick] {
            *slot(caches, directory).lock().await = AcmeCache::Empty;
        }
        if let Some(f) = &self.fleet
            && let Err(e) = f.forget_account(directory).await
        {
            warn!("fleet: the lost account could not be removed from etcd: {e}");
        }
        let path = self.state.account_file(directory);
        let lost = path.with_extension("json.lost");
        if let Err(e) = std::fs::rename(&path, &lost) {
            warn!("cannot set aside {}: {e}", path.display());
        }
    }

    /// The ACME account at one CA of a certificate's list, connecting (and creating it)
    /// on first use. A failure carries the CA's stored hold, if one is in force, for the
    /// ladder.
    pub(super) async fn acme_at(&self, ca: &CaConfig) -> Result<Arc<Acme>, PassError> {
        if let AcmeCache::Ready(a) = &*slot(&self.quick, &ca.directory).lock().await {
            return Ok(a.clone());
        }
        let cache = slot(&self.acme, &ca.directory);
        let mut cache = cache.lock().await;
        let failed = |error: Arc<AcmeError>| PassError::Connect {
            error,
            hold: crate::acme::ca_hold(&self.state, &ca.directory),
        };
        match &*cache {
            AcmeCache::Ready(a) => return Ok(a.clone()),
            AcmeCache::Failed(e, at)
                if at.elapsed() < crate::fault::scaled(CONNECT_FAILURE_TTL) =>
            {
                return Err(failed(e.clone()));
            }
            _ => {}
        }
        let shared = self.fleet_account(&ca.directory).await;
        let mut connected = Acme::connect(&self.cfg.acme.at(ca), &self.state).await;
        if connected.is_ok()
            && shared == SharedAccount::None
            && self.offer_account(&ca.directory).await
        {
            // Another replica's account won the race: use it, as the whole fleet does.
            connected = Acme::connect(&self.cfg.acme.at(ca), &self.state).await;
        }
        match connected {
            Ok(a) => {
                let a = Arc::new(a);
                *cache = AcmeCache::Ready(a.clone());
                Ok(a)
            }
            Err(e) => {
                let e = Arc::new(e);
                *cache = AcmeCache::Failed(e.clone(), tokio::time::Instant::now());
                Err(failed(e))
            }
        }
    }
}

impl Runner {
    /// The CA of a certificate's list with this directory (`None`: the primary), or None
    /// when it is no longer configured, so nothing is asked of a CA the config dropped.
    pub(super) fn ca_by_directory(
        &self,
        cert: &CertConfig,
        directory: Option<&str>,
    ) -> Option<CaConfig> {
        let cas = self.cfg.acme.cas_for(cert);
        match directory {
            None => cas.into_iter().next(),
            Some(d) => cas.into_iter().find(|c| c.directory == d),
        }
    }

    /// The quick connection failed a moment ago: skip optional lookups without even
    /// reading the CA's record (a no-op pass over 10,000 certificates with the CA down).
    pub(super) fn ca_known_unreachable(&self, directory: &str) -> bool {
        slot(&self.quick, directory).try_lock().is_ok_and(|c| {
            matches!(&*c, AcmeCache::Failed(_, at)
                if at.elapsed() < crate::fault::scaled(CONNECT_FAILURE_TTL))
        })
    }

    /// The account for an optional lookup, or None when the CA cannot be reached now. The
    /// first failure is logged once (not once per certificate); later callers within
    /// [`CONNECT_FAILURE_TTL`] get None at once.
    pub(super) async fn acme_quick_at(&self, ca: &CaConfig) -> Option<Arc<Acme>> {
        if let AcmeCache::Ready(a) = &*slot(&self.acme, &ca.directory).lock().await {
            return Some(a.clone());
        }
        let cache = slot(&self.quick, &ca.directory);
        let mut cache = cache.lock().await;
        match &*cache {
            AcmeCache::Ready(a) => return Some(a.clone()),
            AcmeCache::Failed(_, at)
                if at.elapsed() < crate::fault::scaled(CONNECT_FAILURE_TTL) =>
            {
                return None;
            }
            _ => {}
        }
        let shared = self.fleet_account(&ca.directory).await;
        let mut connected = Acme::connect_quick(&self.cfg.acme.at(ca), &self.state).await;
        if connected.is_ok()
            && shared == SharedAccount::None
            && self.offer_account(&ca.directory).await
        {
            connected = Acme::connect_quick(&self.cfg.acme.at(ca), &self.state).await;
        }
        match connected {
            Ok(a) => {
                let a = Arc::new(a);
                *cache = AcmeCache::Ready(a.clone());
                Some(a)
            }
            Err(e) => {
                warn!(
                    directory = %ca.directory,
                    "cannot reach the CA for ARI; certificates that are not due use their renew_before threshold: {e}"
                );
                *cache = AcmeCache::Failed(Arc::new(e), tokio::time::Instant::now());
                None
            }
        }
    }
}

/// What the fleet had of a CA's account before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SharedAccount {
    /// Not in fleet mode, or etcd could not tell.
    Unknown,
    /// The fleet has none yet: ours is offered after connecting.
    None,
    /// The fleet's account is the one stored locally now.
    Fleet,
}

impl Runner {
    /// Fleet mode: the fleet's ACME account at `directory` replaces the local one, so
    /// every replica orders under one account (a takeover can only resume an order its
    /// own account placed).
    async fn fleet_account(&self, directory: &str) -> SharedAccount {
        let Some(f) = &self.fleet else {
            return SharedAccount::Unknown;
        };
        match f.account(directory).await {
            Ok(Some(creds)) => {
                self.store_account(directory, &creds);
                SharedAccount::Fleet
            }
            Ok(None) => SharedAccount::None,
            Err(e) => {
                warn!(
                    "fleet: the fleet's ACME account could not be read, using this replica's: {e}"
                );
                SharedAccount::Unknown
            }
        }
    }

    /// Offers the local account to the fleet; returns true when another replica's
    /// account stands instead (now stored locally).
    async fn offer_account(&self, directory: &str) -> bool {
        let Some(f) = &self.fleet else {
            return false;
        };
        let path = self.state.account_file(directory);
        let Ok(local) = crate::fsx::read_regular(&path, crate::fsx::STATE_LIMIT, false) else {
            return false;
        };
        match f.offer_account(directory, &local).await {
            Ok(standing) if standing != local => {
                self.store_account(directory, &standing);
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!("fleet: this replica's ACME account could not be shared: {e}");
                false
            }
        }
    }

    /// Writes account credentials into the state directory (0600) when they differ.
    fn store_account(&self, directory: &str, creds: &[u8]) {
        let path = self.state.account_file(directory);
        let same = crate::fsx::read_regular(&path, crate::fsx::STATE_LIMIT, false)
            .is_ok_and(|l| l == creds);
        if same {
            return;
        }
        match crate::store::write_atomic(&path, creds, 0o600, None) {
            Ok(()) => tracing::info!(directory, "fleet: using the fleet's ACME account"),
            Err(e) => warn!(
                "fleet: cannot store the fleet's ACME account in {}: {e}",
                path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(dir: &std::path::Path) -> Runner {
        let src = format!(
            "state_dir = \"{d}/state\"\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n[[cert]]\nname = \"t\"\ndomains = [\"a.example\"]\ncert_path = \"{d}/c.pem\"\nkey_path = \"{d}/k.pem\"\nhttp01_listen = \"127.0.0.1:1\"\n",
            d = dir.display()
        );
        let cfg = Config::from_str_at(&src, std::path::Path::new("t.toml"), dir).unwrap();
        let st = StateDir::create(&dir.join("state")).unwrap();
        Runner::new(
            Arc::new(cfg),
            st,
            Responders::default(),
            crate::clock::system(),
        )
    }

    /// Defect 11: a config reload must not hand out a second set of order slots while
    /// tasks of the old config still hold the first.
    #[test]
    fn a_reconfigured_runner_shares_order_slots_and_the_ca_lock() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let r2 = r.reconfigured(r.cfg.clone());
        assert!(Arc::ptr_eq(&r.orders, &r2.orders));
        assert!(r.state.shares_ca_lock(&r2.state));
        let _held = r
            .orders
            .try_acquire_many(crate::config::DEFAULT_MAX_CONCURRENT_ORDERS as u32)
            .unwrap();
        assert!(
            r2.orders.try_acquire().is_err(),
            "the new runner got its own slots"
        );
    }

    /// Defect 11: concurrent certificate tasks updating the shared per-CA record must not
    /// lose each other's facts (load-modify-save without a lock did).
    #[test]
    fn concurrent_ca_record_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let directory = r.cfg.acme.directory.clone();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (r, directory) = (&r, directory.clone());
                s.spawn(move || {
                    for i in 0..50 {
                        if t == 0 && i == 25 {
                            r.update_ca(&directory, |c| c.replaces_unsupported = true);
                        } else {
                            r.update_ca(&directory, |c| {
                                c.ari_checked_at = Some(OffsetDateTime::now_utc());
                            });
                        }
                    }
                });
            }
        });
        let ca = r.state.load_ca(&directory).unwrap();
        assert!(ca.replaces_unsupported, "a concurrent update was lost");
        assert!(ca.ari_checked_at.is_some());
    }
}
