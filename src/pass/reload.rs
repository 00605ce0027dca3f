//! The reload step: the certificate's hooks (and `reload_signal`) after an install, or
//! again on a later pass while they are still owed for the installed set.

use tracing::{error, info};

use super::Outcome;
use crate::config::CertConfig;
use crate::hooks::{HookEvent, run_reload_hooks};
use crate::inventory::CertInfo;
use crate::state::CertRecord;
use crate::timefmt::rfc3339;

/// Runs the reload hooks for the installed set and records whether they are still owed.
/// `done` names what happened before them ("renewed", "hooks retried").
pub(super) async fn run_hooks(
    cert: &CertConfig,
    info: &CertInfo,
    rec: &mut CertRecord,
    done: &str,
) -> Outcome {
    let event = HookEvent {
        event: "installed",
        name: cert.name.clone(),
        domains: cert.domains.clone(),
        cert_path: cert.cert_path.clone(),
        key_path: cert.key_path.clone(),
        chain_path: cert.chain_path.clone(),
        bundle_path: cert.bundle_path.clone(),
        not_after: rfc3339(info.not_after),
        serial: info.serial.clone(),
    };
    crate::fault::point("before-hooks");
    let ran = run_reload_hooks(
        &cert.reload,
        cert.reload_signal.as_ref(),
        &event,
        cert.hook_timeout,
    )
    .await;
    crate::fault::point("after-hooks");
    match ran {
        Ok(()) => {
            rec.hooks_pending = false;
            if done == "hooks retried" {
                rec.last_error = None;
                rec.last_error_class = None;
                info!("reload hooks succeeded on retry");
            }
            Outcome {
                name: cert.name.clone(),
                ok: true,
                summary: format!("{done}; expires {}", rfc3339(info.not_after)),
            }
        }
        Err(e) => {
            rec.hooks_pending = true;
            rec.hook_failures += 1;
            let msg = format!("reload hook failed (will be retried next run): {e}");
            error!("{msg}");
            rec.last_error = Some(msg.clone());
            rec.last_error_class = Some(crate::policy::ErrorClass::Local);
            rec.last_outcome = Some("hook-failed".into());
            Outcome {
                name: cert.name.clone(),
                ok: false,
                summary: msg,
            }
        }
    }
}
