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
//! Files: [`schedule`] (deadlines), `watch` (file events), `server` (HTTP), `signals`
//! (signals and systemd), `reload` (config reload); this file is the select loop.
//!
//! Safety on shutdown: a started install runs on a blocking thread to its end, so aborting
//! a certificate task can only stop it before an install or during its hooks; hooks then
//! stay pending and run on the next start.

mod reload;
pub mod schedule;
mod server;
mod signals;
mod watch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span};

use crate::challenge::Responders;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::pass::{self, CertResult, Fingerprint, Runner};
use crate::state::{StateDir, StateError};
use crate::timefmt::rfc3339;

pub use schedule::{MAX_SLEEP, Schedule};
pub use signals::shutdown_signal;

use server::SharedConfig;
use signals::sd_notify;
use watch::{Dirty, Watch};

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
    /// `[cluster]` could not be used.
    #[error("fleet: {0}")]
    Fleet(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// What one certificate task returns.
type Joined = Result<(tokio::task::Id, (String, CertResult)), JoinError>;

/// The daemon's state between wake-ups.
struct Daemon {
    config_path: PathBuf,
    state: StateDir,
    clock: SharedClock,
    runner: Arc<Runner>,
    responders: Responders,
    shared: SharedConfig,
    watch: Watch,
    events: mpsc::UnboundedReceiver<notify::Event>,
    /// Fleet mode: certificates whose set changed in etcd (install it now).
    fleet_wakes: mpsc::UnboundedReceiver<String>,
    /// Certificates whose fleet set changed while their task ran.
    fleet_dirty: HashSet<String>,
    hup: Signal,
    schedule: Schedule,
    /// Certificates whose task is running.
    busy: HashSet<String>,
    /// Certificates whose files changed while their task ran.
    recheck: HashSet<String>,
    /// The fingerprint each certificate's files had when its last pass ended.
    seen: HashMap<String, Fingerprint>,
    tasks: JoinSet<(String, CertResult)>,
    task_names: HashMap<tokio::task::Id, String>,
    dirty: Dirty,
    debounce: Option<Instant>,
}

/// Probes the watched endpoints (`[[watch]] endpoints`) at start and then every
/// [`pass::VERIFY_EVERY`], with the config in force at each round, and notifies watched
/// certificates entering `warn_before`; `/metrics` and `status` read what they served
/// from the state directory.
fn spawn_watch_probes(shared: SharedConfig, clock: SharedClock) {
    tokio::spawn(async move {
        loop {
            let cfg = shared.read().expect("config lock").clone();
            crate::watched::probe_endpoints(&cfg, clock.now()).await;
            crate::alert::after_pass(&cfg, &[], true, clock.now()).await;
            tokio::time::sleep(crate::fault::scaled(pass::VERIFY_EVERY)).await;
        }
    });
}

/// Runs the daemon until `shutdown` resolves. `cfg` was loaded from `config_path`, which is
/// re-read on SIGHUP or when it changes. `clock` is where "now" comes from.
pub async fn run(
    config_path: PathBuf,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    clock: SharedClock,
) -> Result<(), DaemonError> {
    let state = StateDir::create(&cfg.state_dir)?;
    let _lock = state.lock("certkeeper run")?;
    // Interrupted installs are completed per certificate, by each one's first pass: a
    // failure there belongs to that certificate and does not keep the others down.
    let mut d = Daemon::start(config_path, cfg, state, clock).await?;
    tokio::pin!(shutdown);
    loop {
        d.start_due();
        let wake = d.schedule.next_deadline(&d.busy);
        let debounce_at = d.debounce.unwrap_or(wake);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = d.hup.recv() => {
                info!("SIGHUP: reloading the config");
                d.dirty.config = true;
                d.debounce = Some(Instant::now());
            }
            Some(joined) = d.tasks.join_next_with_id(), if !d.tasks.is_empty() => {
                d.joined(joined).await;
            }
            Some(ev) = d.events.recv() => d.event(&ev),
            Some(name) = d.fleet_wakes.recv() => d.fleet_changed(name),
            _ = tokio::time::sleep_until(debounce_at), if d.debounce.is_some() => {
                d.debounced().await;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    d.stop().await;
    Ok(())
}

impl Daemon {
    /// Starts the responders, the metrics server, the watcher and the signal handlers,
    /// and schedules every certificate now.
    async fn start(
        config_path: PathBuf,
        cfg: Config,
        state: StateDir,
        clock: SharedClock,
    ) -> Result<Self, DaemonError> {
        let hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let cfg = Arc::new(cfg);
        let responders = Responders::default();
        let fleet =
            pass::fleet_of(&cfg, &responders).map_err(|e| DaemonError::Fleet(e.to_string()))?;
        server::start_responders(&cfg, &responders).await;
        let shared: SharedConfig = Arc::new(RwLock::new(cfg.clone()));
        if let Some(addr) = cfg.metrics_listen {
            server::serve_metrics(addr, shared.clone(), clock.clone(), fleet.clone()).await?;
        }
        spawn_watch_probes(shared.clone(), clock.clone());
        let (fleet_tx, fleet_wakes) = mpsc::unbounded_channel::<String>();
        if let Some(f) = &fleet {
            info!(node = %f.node(), prefix = %f.config().prefix, "fleet mode: coordinating through etcd");
            tokio::spawn(f.clone().watch_certs(fleet_tx));
        }
        let runner = Runner::new(
            cfg.clone(),
            state.clone(),
            responders.clone(),
            clock.clone(),
        )
        .with_fleet(fleet);
        let (tx, events) = mpsc::unbounded_channel::<notify::Event>();
        let watch = Watch::start(&cfg, &config_path, tx)?;
        let mut schedule = Schedule::default();
        for c in &cfg.certs {
            schedule.set(&c.name, Instant::now());
        }
        signals::start_watchdog();
        sd_notify(&[sd_notify::NotifyState::Ready]);
        info!(
            certificates = cfg.certs.len(),
            config = %config_path.display(),
            "daemon started"
        );
        Ok(Self {
            config_path,
            state,
            clock,
            runner: Arc::new(runner),
            responders,
            shared,
            watch,
            events,
            fleet_wakes,
            fleet_dirty: HashSet::new(),
            hup,
            schedule,
            busy: HashSet::new(),
            recheck: HashSet::new(),
            seen: HashMap::new(),
            tasks: JoinSet::new(),
            task_names: HashMap::new(),
            dirty: Dirty::default(),
            debounce: None,
        })
    }

    /// Starts a task for every certificate whose time has come.
    fn start_due(&mut self) {
        for name in self.schedule.due(Instant::now(), &self.busy) {
            let Some(cert) = self
                .runner
                .cfg
                .certs
                .iter()
                .find(|c| c.name == name)
                .cloned()
            else {
                self.schedule.remove(&name);
                continue;
            };
            self.busy.insert(name.clone());
            let r = self.runner.clone();
            let span = info_span!("cert", cert = %name);
            let handle = self.tasks.spawn(
                async move {
                    let res = r.process(&cert, false).await;
                    (cert.name, res)
                }
                .instrument(span),
            );
            self.task_names.insert(handle.id(), name);
        }
    }

    /// A certificate task ended: schedule its next turn.
    async fn joined(&mut self, joined: Joined) {
        let (id, (name, res)) = match joined {
            Ok(j) => j,
            Err(e) => return self.task_failed(e),
        };
        self.task_names.remove(&id);
        self.busy.remove(&name);
        if self.runner.cfg.notify.is_some() {
            // Off the loop: a receiver that hangs (bounded by notify.timeout) delays nothing.
            let (cfg, clock, n) = (self.runner.cfg.clone(), self.clock.clone(), name.clone());
            tokio::spawn(
                async move { crate::alert::after_pass(&cfg, &[n], false, clock.now()).await },
            );
        }
        if res.installed && self.watch.dirs.len() < self.watch.map.watch_dirs().len() {
            // A directory that did not exist at start-up may exist now.
            self.watch.update(&self.runner.cfg, &self.config_path);
        }
        // Events seen while the task ran are either the echo of its own install or a real
        // change: the fingerprint it recorded tells which.
        let changed =
            self.recheck.remove(&name) && self.current_fingerprint(&name).await != res.fingerprint;
        if let Some(f) = res.fingerprint {
            self.seen.insert(name.clone(), f);
        }
        if self.fleet_dirty.remove(&name) {
            self.schedule.set(&name, Instant::now());
        } else if changed {
            info!(cert = %name, "watched file changed during the pass, re-evaluating");
            self.schedule.set(&name, Instant::now());
        } else {
            self.schedule
                .set_wall(&name, res.next_wake, self.clock.now());
            debug!(cert = %name, next = %rfc3339(res.next_wake), "scheduled");
        }
    }

    /// A certificate task panicked (recorded on the ladder) or was cancelled.
    fn task_failed(&mut self, e: JoinError) {
        let Some(name) = self.task_names.remove(&e.id()) else {
            error!("a certificate task failed: {e}");
            return;
        };
        self.busy.remove(&name);
        self.recheck.remove(&name);
        if e.is_panic() {
            let what = e.to_string();
            error!(cert = %name, "certificate task panicked: {what}");
            let now = self.clock.now();
            let next = pass::record_panic(&self.state, &name, &what, now);
            self.schedule.set_wall(&name, next, now);
        } else {
            let retry = crate::fault::scaled(pass::HOOK_RETRY);
            self.schedule.set(&name, Instant::now() + retry);
        }
    }

    /// The fleet published a new set of `name`: its task installs it now (or right
    /// after the running one ends).
    fn fleet_changed(&mut self, name: String) {
        if !self.runner.cfg.certs.iter().any(|c| c.name == name) {
            return;
        }
        debug!(cert = %name, "fleet: new set published");
        if self.busy.contains(&name) {
            self.fleet_dirty.insert(name);
        } else {
            self.schedule.set(&name, Instant::now());
        }
    }

    /// A file event: note what it concerns and start the debounce.
    fn event(&mut self, ev: &notify::Event) {
        self.watch.map.classify(ev, &mut self.dirty);
        if (self.dirty.config || !self.dirty.certs.is_empty()) && self.debounce.is_none() {
            self.debounce = Some(Instant::now() + DEBOUNCE);
        }
    }

    /// The debounce ended: reload the config if it changed, re-check changed files.
    async fn debounced(&mut self) {
        self.debounce = None;
        let d = std::mem::take(&mut self.dirty);
        if d.config {
            self.reload_config().await;
        }
        for name in d.certs {
            if self.busy.contains(&name) {
                self.recheck.insert(name);
                continue;
            }
            let now_fp = self.current_fingerprint(&name).await;
            if now_fp.is_some() && now_fp == self.seen.get(&name).copied() {
                debug!(cert = %name, "file event without a change (our own install)");
                continue;
            }
            info!(cert = %name, "watched file changed, re-evaluating");
            if self.busy.contains(&name) {
                self.recheck.insert(name);
            } else {
                self.schedule.set(&name, Instant::now());
            }
        }
    }

    /// Re-reads the config; a valid one replaces the old and every certificate is looked
    /// at again.
    async fn reload_config(&mut self) {
        let Some(new) = reload::reload(&self.config_path, &self.runner.cfg) else {
            return;
        };
        let key = |c: &Config| {
            c.cluster.as_ref().map(|c| {
                (
                    c.etcd.clone(),
                    c.prefix.clone(),
                    c.node_name.clone(),
                    c.seal_key_file.clone(),
                )
            })
        };
        if key(&new) != key(&self.runner.cfg) {
            tracing::warn!(
                "[cluster] changed: the fleet connection is set up at start; restart certkeeper to apply it"
            );
        }
        let new = Arc::new(new);
        *self.shared.write().expect("config lock") = new.clone();
        server::start_responders(&new, &self.responders).await;
        self.watch.update(&new, &self.config_path);
        let names: HashSet<String> = new.certs.iter().map(|c| c.name.clone()).collect();
        self.schedule.retain(&names);
        for n in &names {
            self.schedule.set(n, Instant::now());
        }
        self.runner = Arc::new(self.runner.reconfigured(new));
    }

    /// The current fingerprint of a certificate's files, read off the async workers.
    async fn current_fingerprint(&self, name: &str) -> Option<Fingerprint> {
        let c = self
            .runner
            .cfg
            .certs
            .iter()
            .find(|c| c.name == name)?
            .clone();
        tokio::task::spawn_blocking(move || pass::fingerprint_files(&c))
            .await
            .ok()
    }

    /// Graceful stop: in-flight work gets [`SHUTDOWN_GRACE`], then is abandoned.
    async fn stop(mut self) {
        sd_notify(&[sd_notify::NotifyState::Stopping]);
        if !self.tasks.is_empty() {
            info!(
                in_flight = self.tasks.len(),
                "waiting briefly for in-flight work, then abandoning it"
            );
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await;
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Some(f) = &self.runner.fleet {
            f.shutdown().await;
        }
        info!("stopped");
    }
}
