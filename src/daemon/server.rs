//! The daemon's HTTP side: the built-in HTTP-01 responders, and `/metrics` + `/healthz`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tracing::{error, info};

use super::DaemonError;
use crate::challenge::Responders;
use crate::clock::SharedClock;
use crate::config::{Challenge, Config};
use crate::report;

/// Starts the built-in HTTP-01 responders the config needs (kept for the process's life).
pub(super) async fn start_responders(cfg: &Config, responders: &Responders) {
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

/// The config in force, shared with the HTTP server.
pub(super) type SharedConfig = Arc<RwLock<Arc<Config>>>;

/// The fleet connection, when `[cluster]` is configured.
pub(super) type SharedFleet = Option<Arc<crate::fleet::Fleet>>;

/// Serves `/metrics` and `/healthz` on `metrics_listen`. In fleet mode `/healthz` says
/// `cluster: unavailable` while etcd is (still 200: the replica serves its files).
pub(super) async fn serve_metrics(
    addr: SocketAddr,
    cfg: SharedConfig,
    clock: SharedClock,
    fleet: SharedFleet,
) -> Result<(), DaemonError> {
    use axum::extract::State;
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    type St = State<(SharedConfig, SharedClock, SharedFleet)>;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State((cfg, clock, fleet)): St| async move {
                let cfg = cfg.read().expect("config lock").clone();
                let body = tokio::task::spawn_blocking(move || {
                    let now = clock.now();
                    let mut rows = report::status(&cfg, now);
                    if let Some(f) = &fleet {
                        report::add_fleet_local(&mut rows, f.available(), &f.installed());
                    }
                    report::metrics::render(&rows, &report::watched(&cfg, now))
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
            }),
        )
        .route(
            "/healthz",
            get(|State((_, _, fleet)): St| async move {
                match fleet.as_ref().and_then(|f| f.last_error()) {
                    Some(e) => format!("cluster: unavailable: {e}\n"),
                    None => "ok\n".to_string(),
                }
            }),
        )
        .with_state((cfg, clock, fleet));
    info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("metrics server stopped: {e}");
        }
    });
    Ok(())
}
