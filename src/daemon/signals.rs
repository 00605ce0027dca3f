//! Signals and systemd: SIGTERM/SIGINT stop the daemon, SIGHUP reloads (handled in the
//! loop), and READY/STOPPING/WATCHDOG go to systemd through sd_notify.

use tracing::{debug, error, info};

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

/// Tells systemd about a state change; without systemd this is a no-op.
pub(super) fn sd_notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}

/// Pings systemd's watchdog at half its interval, when systemd asked for one.
pub(super) fn start_watchdog() {
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval / 2);
            loop {
                t.tick().await;
                sd_notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}
