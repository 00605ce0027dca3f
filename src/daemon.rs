//! `certkeeper run`: the long-running daemon / sidecar.
//!
//! It does what `renew` does, then sleeps until the earliest next renewal time (jitter,
//! retry ladder and ARI polls included, and at least every 12 hours), with no polling loop.
//! It wakes early for: a change to a watched certificate file (parent directories are
//! watched, so atomic renames and Kubernetes `..data` swaps are seen; events are debounced),
//! a change to the config file or SIGHUP (reload; an invalid config is logged and the old
//! one stays), and SIGTERM/SIGINT (graceful stop). The HTTP-01 responders stay up for the
//! life of the process, `/metrics` and `/healthz` are served on `metrics_listen`, and
//! systemd is told READY/STOPPING/WATCHDOG through sd_notify.
//!
//! Safety on shutdown: the install itself has no await point (stage, rename, record, finish
//! run synchronously), so aborting a certificate task can only stop it before an install or
//! during its hooks; hooks then stay pending and run on the next start.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::challenge::Responders;
use crate::config::{Challenge, Config};
use crate::renew::{self, CertResult, Fingerprint, Runner};
use crate::state::{StateDir, StateError};
use crate::timefmt::rfc3339;

/// Re-evaluate every certificate at least this often (also when ARI is re-checked).
pub const MAX_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// File events are collected for this long before acting on them.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// How long in-flight work gets after SIGTERM before it is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory is unusable or locked.
    #[error(transparent)]
    State(#[from] StateError),
    /// The metrics listener could not bind.
    #[error("cannot listen on metrics_listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The file watcher could not start.
    #[error("cannot watch files: {0}")]
    Watch(#[from] notify::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// When each certificate next needs attention, in the runtime's clock (so tests can use
/// `tokio::time::pause()`).
#[derive(Debug, Default)]
pub struct Schedule {
    at: HashMap<String, Instant>,
}

impl Schedule {
    /// Sets when `name` is next looked at; never later than `MAX_SLEEP` from now.
    pub fn set(&mut self, name: &str, at: Instant) {
        let cap = Instant::now() + MAX_SLEEP;
        self.at.insert(name.to_string(), at.min(cap));
    }

    /// Converts a wall-clock time from the policy into the runtime's clock.
    pub fn set_wall(&mut self, name: &str, when: OffsetDateTime) {
        let delta = when - OffsetDateTime::now_utc();
        let d = Duration::try_from(delta).unwrap_or(Duration::ZERO);
        self.set(name, Instant::now() + d);
    }

    /// Forgets a certificate (removed from the config).
    pub fn remove(&mut self, name: &str) {
        self.at.remove(name);
    }

    /// Keeps only these names.
    pub fn retain(&mut self, names: &HashSet<String>) {
        self.at.retain(|n, _| names.contains(n));
    }

    /// The names whose time has come, except those in `busy`.
    pub fn due(&self, now: Instant, busy: &HashSet<String>) -> Vec<String> {
        let mut v: Vec<_> = self
            .at
            .iter()
            .filter(|(n, t)| **t <= now && !busy.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The earliest deadline among names not in `busy`, capped at `MAX_SLEEP` from now.
    pub fn next_deadline(&self, busy: &HashSet<String>) -> Instant {
        let cap = Instant::now() + MAX_SLEEP;
        self.at
            .iter()
            .filter(|(n, _)| !busy.contains(*n))
            .map(|(_, t)| *t)
            .min()
            .unwrap_or(cap)
            .min(cap)
    }

    /// When `name` is scheduled.
    pub fn get(&self, name: &str) -> Option<Instant> {
        self.at.get(name).copied()
    }
}

/// What a batch of file events means.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dirty {
    certs: HashSet<String>,
    config: bool,
}

/// Maps watched file names to the certificates (or the config) they belong to.
#[derive(Debug, Default)]
struct WatchMap {
    files: HashMap<PathBuf, Vec<String>>,
    dirs: HashMap<PathBuf, Vec<String>>,
    config: PathBuf,
}

impl WatchMap {
    fn new(cfg: &Config, config_path: &Path) -> Self {
        let mut m = Self {
            config: absolute(config_path),
            ..Self::default()
        };
        for c in &cfg.certs {
            for (_, p) in c.files().iter() {
                m.files
                    .entry(p.to_path_buf())
                    .or_default()
                    .push(c.name.clone());
                if let Some(d) = p.parent() {
                    let v = m.dirs.entry(d.to_path_buf()).or_default();
                    if !v.contains(&c.name) {
                        v.push(c.name.clone());
                    }
                }
            }
        }
        m
    }

    fn watch_dirs(&self) -> HashSet<PathBuf> {
        let mut d: HashSet<PathBuf> = self.dirs.keys().cloned().collect();
        if let Some(p) = self.config.parent() {
            d.insert(p.to_path_buf());
        }
        d
    }

    /// Which certificates an event concerns. Reads (open/close-nowrite) are ignored, or our
    /// own inspection of the files would wake us forever.
    fn classify(&self, ev: &notify::Event, out: &mut Dirty) {
        use notify::event::{AccessKind, AccessMode};
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            _ => {}
        }
        for p in &ev.paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            // Kubernetes swaps a `..data` symlink to update a mounted volume.
            let k8s_swap = name.as_deref().is_some_and(|n| n.starts_with(".."));
            if *p == self.config || (k8s_swap && Some(dir.as_path()) == self.config.parent()) {
                out.config = true;
            }
            if let Some(names) = self.files.get(p) {
                out.certs.extend(names.iter().cloned());
            } else if k8s_swap && let Some(names) = self.dirs.get(&dir) {
                out.certs.extend(names.iter().cloned());
            }
        }
    }
}

/// The current fingerprint of a certificate's files, read off the async workers.
async fn current_fingerprint(cfg: &Config, name: &str) -> Option<Fingerprint> {
    let c = cfg.certs.iter().find(|c| c.name == name)?.clone();
    tokio::task::spawn_blocking(move || renew::fingerprint_files(&c))
        .await
        .ok()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Resolves when SIGTERM or SIGINT arrives: what systemd and the kubelet send.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot listen for SIGTERM/SIGINT");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, stopping"),
        _ = int.recv() => info!("SIGINT received, stopping"),
    }
}

fn sd_notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}

async fn start_responders(cfg: &Config, responders: &Responders) {
    let mut addrs: Vec<SocketAddr> = cfg
        .certs
        .iter()
        .filter_map(|c| match c.challenge {
            Challenge::Http01Listen(a) => Some(a),
            _ => None,
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    for a in addrs {
        if let Err(e) = responders.get(a).await {
            error!("{e}");
        }
    }
}

type SharedConfig = Arc<RwLock<Arc<Config>>>;

async fn serve_metrics(addr: SocketAddr, cfg: SharedConfig) -> Result<(), DaemonError> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(cfg): axum::extract::State<SharedConfig>| async move {
                    let cfg = cfg.read().expect("config lock").clone();
                    let body = tokio::task::spawn_blocking(move || {
                        crate::metrics::render(&renew::status(&cfg, OffsetDateTime::now_utc()))
                    })
                    .await
                    .unwrap_or_default();
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(cfg);
    info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("metrics server stopped: {e}");
        }
    });
    Ok(())
}

struct Watch {
    watcher: notify::RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    map: WatchMap,
}

impl Watch {
    fn update(&mut self, cfg: &Config, config_path: &Path) {
        self.map = WatchMap::new(cfg, config_path);
        let want = self.map.watch_dirs();
        for d in self.dirs.difference(&want) {
            let _ = self.watcher.unwatch(d);
        }
        let mut have = HashSet::new();
        for d in &want {
            if self.dirs.contains(d) {
                have.insert(d.clone());
                continue;
            }
            match self.watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    have.insert(d.clone());
                }
                Err(e) => warn!(dir = %d.display(), "cannot watch directory: {e}"),
            }
        }
        self.dirs = have;
    }
}

/// Runs the daemon until `shutdown` resolves. `cfg` was loaded from `config_path`, which is
/// re-read on SIGHUP or when it changes.
pub async fn run(
    config_path: PathBuf,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let state = StateDir::create(&cfg.state_dir)?;
    let _lock = state.lock("certkeeper run")?;
    // Interrupted installs are completed per certificate, by each one's first pass: a
    // failure there belongs to that certificate and does not keep the others down.
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let cfg = Arc::new(cfg);
    let responders = Responders::default();
    start_responders(&cfg, &responders).await;
    let shared: SharedConfig = Arc::new(RwLock::new(cfg.clone()));
    if let Some(addr) = cfg.metrics_listen {
        serve_metrics(addr, shared.clone()).await?;
    }
    let mut runner = Arc::new(Runner::new(cfg.clone(), state.clone(), responders.clone()));

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<notify::Event>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let _ = ev_tx.send(ev);
        }
    })?;
    let mut watch = Watch {
        watcher,
        dirs: HashSet::new(),
        map: WatchMap::default(),
    };
    watch.update(&cfg, &config_path);

    let mut schedule = Schedule::default();
    for c in &cfg.certs {
        schedule.set(&c.name, Instant::now());
    }
    let mut busy: HashSet<String> = HashSet::new();
    let mut recheck: HashSet<String> = HashSet::new();
    let mut seen: HashMap<String, Fingerprint> = HashMap::new();
    let mut tasks: JoinSet<(String, CertResult)> = JoinSet::new();
    let mut task_names: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut dirty = Dirty::default();
    let mut debounce: Option<Instant> = None;

    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval / 2);
            loop {
                t.tick().await;
                sd_notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    sd_notify(&[sd_notify::NotifyState::Ready]);
    info!(
        certificates = cfg.certs.len(),
        config = %config_path.display(),
        "daemon started"
    );
    tokio::pin!(shutdown);

    loop {
        // Start whatever is due.
        let now = Instant::now();
        for name in schedule.due(now, &busy) {
            let Some(cert) = runner.cfg.certs.iter().find(|c| c.name == name).cloned() else {
                schedule.remove(&name);
                continue;
            };
            busy.insert(name.clone());
            let r = runner.clone();
            let span = info_span!("cert", cert = %name);
            let handle = tasks.spawn(
                async move {
                    let res = r.process(&cert, false).await;
                    (cert.name, res)
                }
                .instrument(span),
            );
            task_names.insert(handle.id(), name);
        }
        let wake = schedule.next_deadline(&busy);
        let debounce_at = debounce.unwrap_or(wake);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                dirty.config = true;
                debounce = Some(Instant::now());
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                match joined {
                    Ok((id, (name, res))) => {
                        task_names.remove(&id);
                        busy.remove(&name);
                        if res.installed && watch.dirs.len() < watch.map.watch_dirs().len() {
                            // A directory that did not exist at start-up may exist now.
                            watch.update(&runner.cfg, &config_path);
                        }
                        // Events seen while the task ran are either the echo of its own
                        // install or a real change: the fingerprint it recorded tells which.
                        let changed = recheck.remove(&name)
                            && current_fingerprint(&runner.cfg, &name).await != res.fingerprint;
                        if let Some(f) = res.fingerprint {
                            seen.insert(name.clone(), f);
                        }
                        if changed {
                            info!(cert = %name, "watched file changed during the pass, re-evaluating");
                            schedule.set(&name, Instant::now());
                        } else {
                            schedule.set_wall(&name, res.next_wake);
                            debug!(cert = %name, next = %rfc3339(res.next_wake), "scheduled");
                        }
                    }
                    Err(e) => {
                        let Some(name) = task_names.remove(&e.id()) else {
                            error!("a certificate task failed: {e}");
                            continue;
                        };
                        busy.remove(&name);
                        recheck.remove(&name);
                        if e.is_panic() {
                            let what = e.to_string();
                            error!(cert = %name, "certificate task panicked: {what}");
                            let next = renew::record_panic(&state, &name, &what);
                            schedule.set_wall(&name, next);
                        } else {
                            schedule.set(&name, Instant::now() + crate::fault::scaled(renew::HOOK_RETRY));
                        }
                    }
                }
            }
            Some(ev) = ev_rx.recv() => {
                watch.map.classify(&ev, &mut dirty);
                if (dirty.config || !dirty.certs.is_empty()) && debounce.is_none() {
                    debounce = Some(Instant::now() + DEBOUNCE);
                }
            }
            _ = tokio::time::sleep_until(debounce_at), if debounce.is_some() => {
                debounce = None;
                let d = std::mem::take(&mut dirty);
                if d.config {
                    if let Some(new) = reload(&config_path, &runner.cfg) {
                        let new = Arc::new(new);
                        *shared.write().expect("config lock") = new.clone();
                        start_responders(&new, &responders).await;
                        watch.update(&new, &config_path);
                        let names: HashSet<String> = new.certs.iter().map(|c| c.name.clone()).collect();
                        schedule.retain(&names);
                        for n in &names {
                            schedule.set(n, Instant::now());
                        }
                        runner = Arc::new(runner.reconfigured(new));
                    }
                }
                for name in d.certs {
                    if busy.contains(&name) {
                        recheck.insert(name);
                        continue;
                    }
                    let now_fp = current_fingerprint(&runner.cfg, &name).await;
                    if now_fp.is_some() && now_fp == seen.get(&name).copied() {
                        debug!(cert = %name, "file event without a change (our own install)");
                        continue;
                    }
                    info!(cert = %name, "watched file changed, re-evaluating");
                    if busy.contains(&name) {
                        recheck.insert(name);
                    } else {
                        schedule.set(&name, Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }

    sd_notify(&[sd_notify::NotifyState::Stopping]);
    if !tasks.is_empty() {
        info!(
            in_flight = tasks.len(),
            "waiting briefly for in-flight work, then abandoning it"
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    info!("stopped");
    Ok(())
}

/// Re-reads the config; on any problem logs it and returns None (the old config stays).
fn reload(path: &Path, old: &Config) -> Option<Config> {
    match Config::from_file(path) {
        Ok(new) if new.state_dir != old.state_dir => {
            error!(
                "config reload: state_dir changed from {} to {}; that needs a restart. Keeping the old config",
                old.state_dir.display(),
                new.state_dir.display()
            );
            None
        }
        Ok(new) if !crate::config::strict_mode_violations(&new, path).is_empty() => {
            for e in crate::config::strict_mode_violations(&new, path) {
                error!("config reload failed (strict_modes), keeping the old config: {e}");
            }
            None
        }
        Ok(new) => {
            if new.metrics_listen != old.metrics_listen {
                warn!("config reload: metrics_listen changes take effect on restart");
            }
            let added: Vec<_> = new
                .certs
                .iter()
                .filter(|c| !old.certs.iter().any(|o| o.name == c.name))
                .map(|c| c.name.as_str())
                .collect();
            let removed: Vec<_> = old
                .certs
                .iter()
                .filter(|c| !new.certs.iter().any(|o| o.name == c.name))
                .map(|c| c.name.as_str())
                .collect();
            info!(
                added = %added.join(","),
                removed = %removed.join(","),
                "config reloaded ({} certificates; removed ones are forgotten, their files stay)",
                new.certs.len()
            );
            Some(new)
        }
        Err(errs) => {
            for e in &errs.0 {
                error!("config reload failed, keeping the old config: {e}");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn earliest_deadline_wins_and_due_list_follows_time() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.set("a", t0 + Duration::from_secs(300));
        s.set("b", t0 + Duration::from_secs(60));
        s.set("c", t0 + Duration::from_secs(3600));
        let none = HashSet::new();
        assert_eq!(s.next_deadline(&none), t0 + Duration::from_secs(60));
        assert!(s.due(Instant::now(), &none).is_empty());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.due(Instant::now(), &none), vec!["b".to_string()]);
        // A busy certificate is neither due nor a deadline.
        let busy: HashSet<String> = ["b".to_string()].into();
        assert_eq!(s.next_deadline(&busy), t0 + Duration::from_secs(300));
        tokio::time::advance(Duration::from_secs(240)).await;
        assert_eq!(
            s.due(Instant::now(), &none),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_is_capped_at_twelve_hours() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.set("far", t0 + Duration::from_secs(90 * 86400));
        assert_eq!(s.next_deadline(&HashSet::new()), t0 + MAX_SLEEP);
        let empty = Schedule::default();
        assert_eq!(empty.next_deadline(&HashSet::new()), t0 + MAX_SLEEP);
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_times_map_onto_the_runtime_clock() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.set_wall("x", OffsetDateTime::now_utc() + time::Duration::minutes(10));
        let at = s.get("x").unwrap();
        assert!(at >= t0 + Duration::from_secs(599) && at <= t0 + Duration::from_secs(601));
        // A time in the past means now.
        s.set_wall("y", OffsetDateTime::now_utc() - time::Duration::hours(1));
        assert_eq!(s.get("y").unwrap(), t0);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_ladder_drives_the_schedule() {
        // After the n-th failure the certificate sleeps exactly the ladder's delay.
        let mut s = Schedule::default();
        for (failures, secs) in [(1, 60), (2, 600), (3, 6000), (4, 86400 / 2)] {
            let t0 = Instant::now();
            let wall = OffsetDateTime::now_utc();
            let next = crate::policy::next_attempt(
                failures,
                wall,
                crate::policy::ErrorClass::Transient,
                None,
            );
            s.set_wall("c", next);
            let at = s.get("c").unwrap();
            // Daily retries are still re-evaluated every 12 hours.
            let want = t0 + Duration::from_secs(secs).min(MAX_SLEEP);
            assert!(
                at + Duration::from_secs(1) >= want && at <= want + Duration::from_secs(1),
                "failures {failures}: {:?} vs {:?}",
                at - t0,
                want - t0
            );
            tokio::time::advance(Duration::from_secs(secs)).await;
        }
    }

    #[test]
    fn file_events_map_to_certificates() {
        let src = r#"
state_dir = "/tmp/s"
[acme]
directory = "https://127.0.0.1:1/dir"
[defaults]
http01_listen = "127.0.0.1:1"
[[cert]]
name = "a"
domains = ["a.example"]
cert_path = "/tls/a.pem"
key_path = "/tls/a.key"
[[cert]]
name = "b"
domains = ["b.example"]
cert_path = "/other/b.pem"
key_path = "/other/b.key"
"#;
        let cfg =
            Config::from_str_at(src, Path::new("/etc/ck/ck.toml"), Path::new("/etc/ck")).unwrap();
        let m = WatchMap::new(&cfg, Path::new("/etc/ck/ck.toml"));
        let ev = |kind: EventKind, p: &str| notify::Event::new(kind).add_path(PathBuf::from(p));
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        let cases: Vec<(notify::Event, Vec<&str>, bool)> = vec![
            (
                ev(EventKind::Remove(RemoveKind::File), "/tls/a.pem"),
                vec!["a"],
                false,
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    "/other/b.key",
                ),
                vec!["b"],
                false,
            ),
            (
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    "/tls/a.key",
                ),
                vec!["a"],
                false,
            ),
            // Our own reads must never wake us.
            (
                ev(
                    EventKind::Access(AccessKind::Open(AccessMode::Read)),
                    "/tls/a.pem",
                ),
                vec![],
                false,
            ),
            // Backups and temp files are not watched files.
            (
                ev(EventKind::Create(CreateKind::File), "/tls/a.pem.prev"),
                vec![],
                false,
            ),
            (
                ev(
                    EventKind::Create(CreateKind::File),
                    "/tls/.a.pem.certkeeper-tmp.1",
                ),
                vec![],
                false,
            ),
            // Kubernetes swaps ..data: everything in that directory.
            (
                ev(EventKind::Create(CreateKind::Any), "/tls/..data"),
                vec!["a"],
                false,
            ),
            (
                ev(EventKind::Modify(ModifyKind::Any), "/etc/ck/ck.toml"),
                vec![],
                true,
            ),
            (
                ev(EventKind::Create(CreateKind::Any), "/etc/ck/..data"),
                vec![],
                true,
            ),
        ];
        for (e, certs, config) in cases {
            let mut d = Dirty::default();
            m.classify(&e, &mut d);
            let want: HashSet<String> = certs.iter().map(|s| s.to_string()).collect();
            assert_eq!((d.certs, d.config), (want, config), "{e:?}");
        }
    }
}
