//! Config reload (SIGHUP or a change to the file): the new config replaces the old only
//! when it is valid, passes strict_modes and keeps the same state_dir.

use std::path::Path;

use tracing::{error, info, warn};

use crate::config::Config;

/// Re-reads the config; on any problem logs it and returns None (the old config stays).
pub(super) fn reload(path: &Path, old: &Config) -> Option<Config> {
    match Config::from_file(path) {
        Ok(new) if new.state_dir != old.state_dir => {
            error!(
                "config reload: state_dir changed from {} to {}; that needs a restart. Keeping the old config",
                old.state_dir.display(),
                new.state_dir.display()
            );
            None
        }
        Ok(new) if !crate::check::strict_mode_violations(&new, path).is_empty() => {
            for e in crate::check::strict_mode_violations(&new, path) {
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
