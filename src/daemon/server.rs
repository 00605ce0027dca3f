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

/// Serves `/metrics` and `/healthz` on `metrics_listen`.
pub(super) async fn serve_metrics(
    addr: SocketAddr,
    cfg: SharedConfig,
    clock: SharedClock,
) -> Result<(), DaemonError> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State((cfg, clock)): axum::extract::State<(
                    SharedConfig,
                    SharedClock,
                )>| async move {
                    let cfg = cfg.read().expect("config lock").clone();
                    let body = tokio::task::spawn_blocking(move || {
                        let now = clock.now();
                        report::metrics::render(
                            &report::status(&cfg, now),
                            &report::watched(&cfg, now),
                        )
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
        .with_state((cfg, clock));
    info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("metrics server stopped: {e}");
        }
    });
    Ok(())
}
