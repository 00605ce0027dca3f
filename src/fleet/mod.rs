//! Fleet mode: several replicas serving the same names coordinate through etcd v3, so
//! each renewal is ordered once and installed everywhere.
//!
//! - this file: [`Fleet`], the connection (every request bounded by
//!   `cluster.request_timeout`), this node's lease and its keep-alive, availability, and
//!   the plain reads and writes of the shared facts;
//! - [`entry`]: what is stored, as JSON, with checksums;
//! - [`lock`]: the per-certificate lock and the writes fenced by it;
//! - [`watch`]: the watch on `certs/` that keeps a local copy and wakes the daemon;
//! - [`view`]: what `status` and `cluster status` show.
//!
//! Keys, all under `cluster.prefix` (P): `P/certs/<cert>`, `P/locks/<cert>`,
//! `P/orders/<cert>`, `P/tokens/<token>`, `P/nodes/<node>`, `P/ladder/<cert>`,
//! `P/ari/<cert>`, `P/accounts/<ca>`, `P/budget/<ca>`.

pub mod entry;
pub mod lock;
pub mod view;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::seal::SealKey;

pub use entry::{AriShared, CertEntry, Installed, Ladder, NodeReport, OrderEntry, Published};
pub use lock::{LockGuard, LockOutcome};
pub use view::FleetView;

/// Why the fleet could not do something. `Unavailable` is etcd trouble (no quorum, no
/// endpoint, a timeout): installed files are never touched because of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    /// etcd did not answer in time, or answered with an error.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// This replica no longer holds the lock (its lease expired): another replica's
    /// result stands, and nothing was written.
    #[error("lost the fleet lock for {0}: another replica took over")]
    LostLock(String),
    /// What etcd holds is unusable (bad JSON, checksum, seal).
    #[error("{0}")]
    Corrupt(String),
}

/// The fleet connection of one replica. Shared by the pass, the daemon and the
/// responders; cheap to clone through `Arc`.
pub struct Fleet {
    cfg: ClusterConfig,
    seal: SealKey,
    /// One client per endpoint (see [`Fleet::call`]).
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    /// The endpoint that answered last.
    current: std::sync::atomic::AtomicUsize,
    /// This node's lease (0 = none yet, or lost): locks, tokens and the node report hang
    /// on it, so they vanish when the replica dies.
    lease: tokio::sync::Mutex<i64>,
    available: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When a request last failed: for [`FAIL_FAST`] after it, requests fail at once, so
    /// 10,000 certificates do not each wait `request_timeout` for an etcd that is down.
    failed_at: Mutex<Option<tokio::time::Instant>>,
    /// `certs/` as last seen, kept current by [`watch`] in the daemon.
    cache: Mutex<HashMap<String, Published>>,
    /// Whether the cache follows etcd right now (a watch is running and caught up).
    synced: AtomicBool,
    /// This node's report (written under its lease).
    report: Mutex<BTreeMap<String, Installed>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.cfg.prefix)
            .field("node", &self.cfg.node_name)
            .finish_non_exhaustive()
    }
}

/// After a failed etcd request, further requests fail at once for this long.
pub const FAIL_FAST: Duration = Duration::from_secs(2);

/// How long a published HTTP-01 answer outlives an orderer that never withdrew it.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// A short hash naming a CA directory in keys (`accounts/`, `budget/`).
pub fn ca_key(directory: &str) -> String {
    crate::seal::sha256_hex(directory.as_bytes())[..16].to_string()
}

impl Fleet {
    /// A fleet handle for a validated `[cluster]`. Connects lazily: etcd being down at
    /// start is etcd trouble like any other, not a reason to stop serving.
    pub fn new(cfg: &ClusterConfig) -> Result<Arc<Self>, FleetError> {
        let seal = cfg
            .seal_key
            .clone()
            .ok_or_else(|| FleetError::Corrupt("cluster.seal_key_file was not read".into()))?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            seal,
            clients: tokio::sync::Mutex::new(Vec::new()),
            current: std::sync::atomic::AtomicUsize::new(0),
            lease: tokio::sync::Mutex::new(0),
            available: AtomicBool::new(true),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            synced: AtomicBool::new(false),
            report: Mutex::new(BTreeMap::new()),
        }))
    }

    /// This replica's node name.
    pub fn node(&self) -> &str {
        &self.cfg.node_name
    }

    /// The `[cluster]` in force.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The fleet key.
    pub(crate) fn seal_key(&self) -> &SealKey {
        &self.seal
    }

    /// Whether the last etcd request succeeded.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Why etcd is unavailable, if it is.
    pub fn last_error(&self) -> Option<String> {
        if self.available() {
            return None;
        }
        self.last_error.lock().expect("fleet error lock").clone()
    }

    /// What this replica reported installed (certificate -> revision and serial).
    pub fn installed(&self) -> BTreeMap<String, Installed> {
        self.report.lock().expect("fleet report").clone()
    }

    /// The full etcd key for `rest` (e.g. `certs/www`).
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.prefix)
    }

    fn mark(&self, r: Result<(), &str>) {
        match r {
            Ok(()) => {
                if !self.available.swap(true, Ordering::Relaxed) {
                    info!("fleet: etcd is available again");
                }
            }
            Err(e) => {
                if self.available.swap(false, Ordering::Relaxed) {
                    warn!("fleet: etcd unavailable: {e}; installed files stay as they are");
                }
                *self.last_error.lock().expect("fleet error lock") = Some(e.to_string());
            }
        }
    }

    /// Runs one etcd request, recording availability. It goes to the endpoint that
    /// answered last and, when that fails, to each other endpoint in turn, each try
    /// bounded by `request_timeout`: etcd-client's own balancer keeps a dead member in
    /// its rotation (etcd-client#39), which would fail every other request while one
    /// member of three is down.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, FleetError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let limit = self.cfg.request_timeout;
        let recent = self
            .failed_at
            .lock()
            .expect("fleet failure lock")
            .is_some_and(|t| t.elapsed() < FAIL_FAST);
        if recent {
            let e = self
                .last_error()
                .unwrap_or_else(|| "etcd unavailable".into());
            return Err(FleetError::Unavailable(e));
        }
        let n = self.cfg.etcd.len().max(1);
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let r = tokio::time::timeout(limit, async {
                let client = self.client(i).await?;
                f(client).await.map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            match r {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    self.mark(Ok(()));
                    *self.failed_at.lock().expect("fleet failure lock") = None;
                    return Ok(v);
                }
                Err(e) => {
                    let at = self.cfg.etcd.get(i).map_or("etcd", String::as_str);
                    debug!("fleet: {what} via {at} failed: {e}");
                    errors.push(format!("{at}: {e}"));
                }
            }
        }
        let e = format!("{what}: {}", errors.join("; "));
        self.mark(Err(&e));
        *self.failed_at.lock().expect("fleet failure lock") = Some(tokio::time::Instant::now());
        Err(FleetError::Unavailable(e))
    }

    /// The client of endpoint `i`, connecting on first use (and again after a failed
    /// connect).
    async fn client(&self, i: usize) -> Result<Client, String> {
        let mut slots = self.clients.lock().await;
        if let Some(Some(c)) = slots.get(i) {
            return Ok(c.clone());
        }
        let endpoint = self.cfg.etcd.get(i).cloned().unwrap_or_default();
        let c = Client::connect([endpoint.as_str()], Some(self.options()?))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        slots[i] = Some(c.clone());
        Ok(c)
    }

    /// Timeouts, keep-alive, TLS and credentials from `[cluster]`.
    fn options(&self) -> Result<ConnectOptions, String> {
        let t = self.cfg.request_timeout;
        let mut o = ConnectOptions::new()
            .with_timeout(t)
            .with_connect_timeout(t)
            .with_keep_alive(Duration::from_secs(5), t)
            .with_require_leader(true);
        if let (Some(u), Some(p)) = (&self.cfg.user, &self.cfg.password) {
            o = o.with_user(u.clone(), p.expose().to_string());
        }
        let tls_wanted = self.cfg.etcd.iter().any(|e| e.starts_with("https://"));
        if tls_wanted || self.cfg.ca_bundle.is_some() || self.cfg.client_cert.is_some() {
            let read = |p: &std::path::Path| {
                crate::fsx::read_regular(p, 1024 * 1024, true).map_err(|e| e.to_string())
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.cfg.ca_bundle {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            } else {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(system_roots_pem()));
            }
            if let (Some(c), Some(k)) = (&self.cfg.client_cert, &self.cfg.client_key) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    /// This node's lease, granted (with its keep-alive task) when there is none.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<i64, FleetError> {
        let mut lease = self.lease.lock().await;
        if *lease != 0 {
            return Ok(*lease);
        }
        let ttl = self.cfg.lease_ttl.as_secs().max(2) as i64;
        let id = self
            .call("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await.map(|r| r.id())
            })
            .await?;
        *lease = id;
        debug!(lease = id, "fleet: lease granted");
        let me = self.clone();
        tokio::spawn(async move { me.keep_alive(id).await });
        drop(lease);
        // The node report hangs on the lease: write it again under the new one.
        self.write_report(id).await;
        Ok(id)
    }

    /// Revokes this node's lease on a graceful stop: its locks, tokens and report go at
    /// once, so another replica takes over without waiting out `lease_ttl`.
    pub async fn shutdown(&self) {
        let mut lease = self.lease.lock().await;
        let id = std::mem::replace(&mut *lease, 0);
        if id != 0 {
            let _ = self
                .call("lease revoke", |mut c| async move {
                    c.lease_revoke(id).await.map(|_| ())
                })
                .await;
        }
    }

    /// Keeps `id` alive every third of the TTL until it is lost (expired while we could not
    /// reach etcd, or revoked); then clears it, so the next use grants a new one. Locks
    /// held under it are gone with it; their fenced writes fail.
    async fn keep_alive(self: Arc<Self>, id: i64) {
        let period = self.cfg.lease_ttl / 3;
        let mut last_ok = tokio::time::Instant::now();
        // One long-lived keep-alive stream, one message per tick; opened again (on the
        // next endpoint that answers) after any error.
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        loop {
            tokio::time::sleep(period).await;
            let r = match stream.as_mut() {
                Some((keeper, s)) => self.keep_alive_once(keeper, s).await,
                None => match self.open_keep_alive(id).await {
                    Ok((opened, ttl)) => {
                        stream = opened;
                        Ok(ttl)
                    }
                    Err(e) => Err(e),
                },
            };
            if r.is_err() {
                stream = None;
            }
            match r {
                Ok(Some(ttl)) if ttl > 0 => last_ok = tokio::time::Instant::now(),
                Ok(_) => {
                    warn!("fleet: this node's lease expired; its locks are gone");
                    break;
                }
                Err(_) if last_ok.elapsed() > self.cfg.lease_ttl => {
                    warn!(
                        "fleet: could not renew this node's lease within lease_ttl; its locks are gone"
                    );
                    break;
                }
                Err(_) => {}
            }
        }
        let mut lease = self.lease.lock().await;
        if *lease == id {
            *lease = 0;
        }
    }

    /// Opens the keep-alive stream of lease `id`; etcd-client sends the first keep-alive
    /// and reads its answer itself. `Some(0)`: the lease is gone.
    async fn open_keep_alive(
        &self,
        id: i64,
    ) -> Result<(Option<(LeaseKeeper, LeaseKeepAliveStream)>, Option<i64>), FleetError> {
        self.call("lease keep-alive", |mut c| async move {
            match c.lease_keep_alive(id).await {
                Ok((keeper, s)) => Ok((Some((keeper, s)), Some(1))),
                // "lease not found": it expired while we could not reach etcd.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok((None, Some(0))),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// One keep-alive on an open stream, bounded by `request_timeout`.
    async fn keep_alive_once(
        &self,
        keeper: &mut LeaseKeeper,
        s: &mut LeaseKeepAliveStream,
    ) -> Result<Option<i64>, FleetError> {
        let limit = self.cfg.request_timeout;
        let r = tokio::time::timeout(limit, async {
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(s.message().await?.map(|m| m.ttl()))
        })
        .await;
        match r {
            Ok(Ok(ttl)) => {
                self.mark(Ok(()));
                Ok(ttl)
            }
            Ok(Err(e)) => {
                let e = format!("lease keep-alive: {e}");
                self.mark(Err(&e));
                Err(FleetError::Unavailable(e))
            }
            Err(_) => {
                let e = format!("lease keep-alive: no answer within {limit:?}");
                self.mark(Err(&e));
                Err(FleetError::Unavailable(e))
            }
        }
    }

    /// Reads one key: its value and mod_revision, or None.
    pub(crate) async fn get(&self, rest: &str) -> Result<Option<(Vec<u8>, i64)>, FleetError> {
        let key = self.key(rest);
        self.call("get", |mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
            }
        })
        .await
    }

    /// Reads every key under `rest` (a directory such as `certs/`): (name, value, mod_revision).
    pub(crate) async fn list(
        &self,
        rest: &str,
    ) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), FleetError> {
        let key = self.key(rest);
        let strip = key.clone();
        self.call("list", |mut c| {
            let (key, strip) = (key.clone(), strip.clone());
            async move {
                let r = c.get(key, Some(GetOptions::new().with_prefix())).await?;
                let rev = r.header().map_or(0, |h| h.revision());
                let items = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        let k = String::from_utf8_lossy(kv.key());
                        let name = k.strip_prefix(&strip).unwrap_or(&k).to_string();
                        (name, kv.value().to_vec(), kv.mod_revision())
                    })
                    .collect();
                Ok((items, rev))
            }
        })
        .await
    }

    /// Writes one key, optionally under this node's lease.
    pub(crate) async fn put(
        self: &Arc<Self>,
        rest: &str,
        value: Vec<u8>,
        leased: bool,
    ) -> Result<(), FleetError> {
        let lease = if leased {
            Some(self.lease().await?)
        } else {
            None
        };
        let key = self.key(rest);
        self.call("put", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let o = lease.map(|l| PutOptions::new().with_lease(l));
                c.put(key, value, o).await.map(|_| ())
            }
        })
        .await
    }

    /// Deletes one key.
    pub(crate) async fn delete(&self, rest: &str) -> Result<(), FleetError> {
        let key = self.key(rest);
        self.call("delete", |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await.map(|_| ()) }
        })
        .await
    }

    /// The current set of a certificate: from the watched copy when it is current, else
    /// read from etcd. `Ok(None)`: the fleet has none yet.
    pub async fn current(&self, name: &str) -> Result<Option<Published>, FleetError> {
        if self.synced.load(Ordering::Relaxed) {
            return Ok(self.cache.lock().expect("fleet cache").get(name).cloned());
        }
        self.current_fresh(name).await
    }

    /// The current set, read from etcd now (never the cache).
    pub async fn current_fresh(&self, name: &str) -> Result<Option<Published>, FleetError> {
        let Some((bytes, rev)) = self.get(&format!("certs/{name}")).await? else {
            return Ok(None);
        };
        let entry = CertEntry::parse(&bytes, name).map_err(|e| {
            FleetError::Corrupt(format!("{}: {e}", self.key(&format!("certs/{name}"))))
        })?;
        Ok(Some(Published {
            revision: rev,
            entry,
        }))
    }

    /// Opens the sealed key of a published set.
    pub fn open_key(&self, entry: &CertEntry) -> Result<String, FleetError> {
        let aad = self.key(&format!("certs/{}", entry.name));
        let key = self
            .seal
            .open(&entry.key_sealed, &aad)
            .map_err(|e| FleetError::Corrupt(format!("{aad}: {e}")))?;
        String::from_utf8(key)
            .map_err(|_| FleetError::Corrupt(format!("{aad}: the key is not text")))
    }

    /// Seals a key for the published set of `name`.
    pub fn seal_key_for(&self, name: &str, key_pem: &str) -> Result<String, FleetError> {
        self.seal
            .seal(key_pem.as_bytes(), &self.key(&format!("certs/{name}")))
            .map_err(|e| FleetError::Corrupt(e.to_string()))
    }

    /// Records that this node installed `revision` of `name`, in its report.
    pub async fn report_installed(self: &Arc<Self>, name: &str, revision: i64, serial: &str) {
        let changed = {
            let mut r = self.report.lock().expect("fleet report");
            let new = Installed {
                revision,
                serial: serial.to_string(),
            };
            r.insert(name.to_string(), new.clone()) != Some(new)
        };
        if changed && let Ok(lease) = self.lease().await {
            self.write_report(lease).await;
        }
    }

    /// Writes this node's report under its lease (best effort: it is for visibility).
    async fn write_report(&self, lease: i64) {
        let report = NodeReport {
            node: self.cfg.node_name.clone(),
            updated_at: Some(OffsetDateTime::now_utc()),
            installed: self.report.lock().expect("fleet report").clone(),
        };
        let bytes = serde_json::to_vec(&report).unwrap_or_default();
        let key = self.key(&format!("nodes/{}", self.cfg.node_name));
        let r = self
            .call("node report", |mut c| {
                let (bytes, key) = (bytes.clone(), key.clone());
                async move {
                    c.put(key, bytes, Some(PutOptions::new().with_lease(lease)))
                        .await
                        .map(|_| ())
                }
            })
            .await;
        if let Err(e) = r {
            debug!("fleet: node report not written: {e}");
        }
    }

    /// A JSON fact under `rest`, if there is one that parses (an unreadable one is as
    /// good as none: each of these facts is only advice).
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        rest: &str,
    ) -> Result<Option<T>, FleetError> {
        Ok(self
            .get(rest)
            .await?
            .and_then(|(b, _)| serde_json::from_slice(&b).ok()))
    }

    /// The shared ladder of a certificate (default when there is none).
    pub async fn ladder(&self, name: &str) -> Result<Ladder, FleetError> {
        Ok(self
            .get_json(&format!("ladder/{name}"))
            .await?
            .unwrap_or_default())
    }

    /// The shared ARI window of a certificate, if one was stored.
    pub async fn ari(&self, name: &str) -> Result<Option<AriShared>, FleetError> {
        self.get_json(&format!("ari/{name}")).await
    }

    /// Stores the ARI window one replica learned, for the others.
    pub async fn put_ari(self: &Arc<Self>, name: &str, ari: &AriShared) -> Result<(), FleetError> {
        let bytes = serde_json::to_vec(ari).unwrap_or_default();
        self.put(&format!("ari/{name}"), bytes, false).await
    }

    /// The fleet's ACME account for a CA (the credentials JSON), if one was stored.
    pub async fn account(&self, directory: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let rest = format!("accounts/{}", ca_key(directory));
        let Some((sealed, _)) = self.get(&rest).await? else {
            return Ok(None);
        };
        let aad = self.key(&rest);
        let sealed = String::from_utf8_lossy(&sealed).into_owned();
        self.seal
            .open(&sealed, &aad)
            .map(Some)
            .map_err(|e| FleetError::Corrupt(format!("{aad}: {e}")))
    }

    /// Removes the fleet's account for a CA (the CA no longer knows it).
    pub async fn forget_account(&self, directory: &str) -> Result<(), FleetError> {
        self.delete(&format!("accounts/{}", ca_key(directory)))
            .await
    }

    /// Stores an account for a CA unless one is there; returns the one that stands.
    pub async fn offer_account(
        &self,
        directory: &str,
        creds: &[u8],
    ) -> Result<Vec<u8>, FleetError> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let rest = format!("accounts/{}", ca_key(directory));
        let key = self.key(&rest);
        let sealed = self
            .seal
            .seal(creds, &key)
            .map_err(|e| FleetError::Corrupt(e.to_string()))?;
        let k = key.clone();
        let won = self
            .call("account", |mut c| {
                let (k, sealed) = (k.clone(), sealed.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(k, sealed, None)]);
                    c.txn(txn).await.map(|r| r.succeeded())
                }
            })
            .await?;
        if won {
            return Ok(creds.to_vec());
        }
        Ok(self
            .account(directory)
            .await?
            .unwrap_or_else(|| creds.to_vec()))
    }

    /// Applies `spend` to the fleet-wide order times of a CA (`budget/<ca>`) by
    /// compare-and-swap, so replicas never overspend the CA's limit between them.
    /// `spend` returns `Err(reopens_at)` when the budget is used up.
    pub async fn spend_budget(
        &self,
        directory: &str,
        mut spend: impl FnMut(&mut Vec<OffsetDateTime>) -> Result<(), OffsetDateTime>,
    ) -> Result<Result<(), OffsetDateTime>, FleetError> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let rest = format!("budget/{}", ca_key(directory));
        let key = self.key(&rest);
        for _ in 0..16 {
            let cur = self.get(&rest).await?;
            let (stamps, rev): (Vec<i64>, i64) = match cur {
                Some((b, rev)) => (serde_json::from_slice(&b).unwrap_or_default(), rev),
                None => (Vec::new(), 0),
            };
            let mut times: Vec<OffsetDateTime> = stamps
                .into_iter()
                .filter_map(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .collect();
            if let Err(until) = spend(&mut times) {
                return Ok(Err(until));
            }
            let stamps: Vec<i64> = times.iter().map(|t| t.unix_timestamp()).collect();
            let bytes = serde_json::to_vec(&stamps).unwrap_or_default();
            let k = key.clone();
            let swapped = self
                .call("budget", |mut c| {
                    let (bytes, k) = (bytes.clone(), k.clone());
                    async move {
                        let cmp = Compare::mod_revision(k.clone(), CompareOp::Equal, rev);
                        let txn = Txn::new()
                            .when([cmp])
                            .and_then([TxnOp::put(k, bytes, None)]);
                        c.txn(txn).await.map(|r| r.succeeded())
                    }
                })
                .await?;
            if swapped {
                return Ok(Ok(()));
            }
        }
        Err(FleetError::Unavailable(
            "the fleet's order budget stayed contended over 16 tries".into(),
        ))
    }
}

/// The system's trusted roots as one PEM bundle (tonic takes PEM), for https:// etcd
/// endpoints without a `ca_bundle`.
fn system_roots_pem() -> Vec<u8> {
    use base64::Engine as _;
    let mut out = String::new();
    for c in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

impl crate::challenge::SharedTokens for Arc<Fleet> {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> crate::challenge::BoxFut<'a, Result<(), String>> {
        // Under a lease of its own, not the node's: when the orderer dies after telling
        // the CA the challenge is ready, the answer stays up for the validation, so the
        // replica taking over finds the order valid instead of failed. The lease ends it
        // even if nobody withdraws it.
        Box::pin(async move {
            let key = self.key(&format!("tokens/{token}"));
            let value = key_authorization.as_bytes().to_vec();
            let ttl = TOKEN_TTL.as_secs() as i64;
            self.call("publish token", |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    let lease = c.lease_grant(ttl, None).await?.id();
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                        .map(|_| ())
                }
            })
            .await
            .map_err(|e| e.to_string())
        })
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> crate::challenge::BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = self.delete(&format!("tokens/{token}")).await;
        })
    }

    fn lookup<'a>(&'a self, token: &'a str) -> crate::challenge::BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let found = self.get(&format!("tokens/{token}")).await.ok().flatten();
            found.and_then(|(v, _)| String::from_utf8(v).ok())
        })
    }
}
