//! What a pass writes into a certificate's record, in one place: a completed install, a
//! failure on the ladder, a panicked task, a set destroyed after its install, and the
//! roll-forward of an install a crash interrupted.

use time::OffsetDateTime;
use tracing::{error, warn};

use super::PassError;
use crate::inventory::OnDisk;
use crate::policy::{self, ErrorClass};
use crate::state::{CertRecord, StateDir};
use crate::store;
use crate::timefmt::rfc3339;

/// How many times in a row the set we installed may be found destroyed (missing or
/// invalid) soon after its install before we stop re-ordering and report the conflict.
pub const MAX_DAMAGED_IN_A_ROW: u32 = 2;
/// "Soon after its install": damage found later than this counts as a one-off.
pub const DAMAGE_WINDOW: time::Duration = time::Duration::days(1);

/// Completes an install of this certificate that a crash interrupted; must run before
/// anything else touches the certificate's files. The completed set counts as the success
/// it was, and its hooks are marked pending so they run for it. A failure here belongs to
/// this certificate alone. Returns whether there was anything to complete.
pub fn roll_forward(
    state: &StateDir,
    name: &str,
    rec: &mut CertRecord,
    now: OffsetDateTime,
) -> Result<bool, PassError> {
    if !store::has_staged(state, name) {
        return Ok(false);
    }
    warn!(cert = %name, "completing an install that was interrupted");
    let fail = |e: String| PassError::RollForward(e);
    store::install(state, name).map_err(|e| fail(e.to_string()))?;
    rec.hooks_pending = true;
    mark_installed(rec, now, None);
    state.save(name, rec).map_err(|e| fail(e.to_string()))?;
    store::finish(state, name).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// Records a completed install: the ladder is reset and the new set is the one we guard.
pub(super) fn mark_installed(rec: &mut CertRecord, now: OffsetDateTime, serial: Option<&str>) {
    rec.failures = 0;
    rec.next_attempt_at = None;
    rec.last_error = None;
    rec.last_error_class = None;
    rec.last_success_at = Some(now);
    rec.last_outcome = Some("renewed".into());
    rec.renewals_ok += 1;
    rec.installed_serial = serial.map(str::to_string);
    rec.damaged_since_install = false;
    rec.deferred_until = None;
    crate::budget::note_issued(&mut rec.issued_at, now);
    // The order went to the CA `rec.ca` names (the reservation was saved with it, so a
    // rolled-forward install knows it too); the next renewal starts at the primary again.
    rec.issuer = rec.ca.take();
    rec.ca_failures = 0;
    rec.fallback_from = None;
    rec.fallback_at = None;
}

/// Records an error and its class without touching the ladder (conflicts, preflight).
pub(super) fn note_error(rec: &mut CertRecord, e: &PassError, outcome: &str) {
    rec.last_error = Some(e.to_string());
    rec.last_error_class = Some(e.class());
    rec.last_outcome = Some(outcome.into());
}

/// Records a failed order on the retry ladder; returns the next attempt time.
pub(super) fn record_failure(
    rec: &mut CertRecord,
    e: &PassError,
    at: OffsetDateTime,
) -> OffsetDateTime {
    rec.failures += 1;
    rec.renewals_failed += 1;
    rec.last_failure_at = Some(at);
    let next = policy::next_attempt(rec.failures, at, e.class(), e.retry_after());
    rec.next_attempt_at = Some(next);
    note_error(rec, e, "failed");
    next
}

/// Records a certificate task that panicked as a failure on the retry ladder, so a bug
/// that panics every time cannot turn into an order loop. Returns the next attempt time.
pub fn record_panic(
    state: &StateDir,
    name: &str,
    what: &str,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let mut rec = state.load(name).unwrap_or_default();
    rec.failures += 1;
    rec.renewals_failed += 1;
    rec.last_failure_at = Some(now);
    let next = policy::next_attempt(rec.failures, now, ErrorClass::Transient, None);
    rec.next_attempt_at = Some(next);
    rec.last_error = Some(format!(
        "internal error: the certificate task panicked: {what}"
    ));
    rec.last_error_class = Some(ErrorClass::Transient);
    rec.last_outcome = Some("failed".into());
    if let Err(e) = state.save(name, &rec) {
        error!(cert = %name, "cannot record state: {e}");
    }
    next
}

/// Tracks whether the set we installed is still there. When it keeps being destroyed soon
/// after each install (another program, or a second certkeeper, writes the same paths),
/// re-ordering would only feed the conflict and burn the CA's duplicate-certificate limit
/// (5 a week), so after [`MAX_DAMAGED_IN_A_ROW`] times this returns the error to report.
pub(super) fn note_damage(
    rec: &mut CertRecord,
    disk: &OnDisk,
    now: OffsetDateTime,
) -> Option<String> {
    if let OnDisk::Present(info) = disk {
        rec.damaged_in_a_row = 0;
        rec.damaged_since_install = false;
        rec.installed_serial = Some(info.serial.clone());
        return None;
    }
    let ours = rec.installed_serial.clone()?;
    if !rec.damaged_since_install {
        rec.damaged_since_install = true;
        let recent = rec.last_success_at.is_some_and(|t| now - t < DAMAGE_WINDOW);
        rec.damaged_in_a_row = if recent { rec.damaged_in_a_row + 1 } else { 1 };
    }
    if rec.damaged_in_a_row < MAX_DAMAGED_IN_A_ROW {
        return None;
    }
    let what = match disk {
        OnDisk::Missing(r) | OnDisk::Invalid { reason: r, .. } => r.as_str(),
        OnDisk::Present(_) => "",
    };
    Some(format!(
        "the set installed at {} (serial {ours}) was destroyed soon after its install, {} times in a row (now: {what}); another program or another certkeeper writes these files. Not ordering again: fix the conflict, then run `certkeeper renew --force`",
        rec.last_success_at
            .map(rfc3339)
            .unwrap_or_else(|| "?".into()),
        rec.damaged_in_a_row,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::CertInfo;

    /// An install at a fallback records that CA as the issuer and sends the next
    /// renewal back to the primary; an install at the primary records no issuer.
    #[test]
    fn an_install_records_the_issuer_and_returns_to_the_primary() {
        let now = OffsetDateTime::now_utc();
        let mut rec = CertRecord {
            ca: Some("https://fallback/dir".into()),
            ca_failures: 1,
            fallback_from: Some("https://primary/dir".into()),
            fallback_at: Some(now),
            ..Default::default()
        };
        mark_installed(&mut rec, now, Some("01"));
        assert_eq!(rec.issuer.as_deref(), Some("https://fallback/dir"));
        assert_eq!(rec.ca, None);
        assert_eq!(rec.ca_failures, 0);
        assert_eq!(
            (rec.fallback_from.as_deref(), rec.fallback_at),
            (None, None)
        );
        mark_installed(&mut rec, now, Some("02"));
        assert_eq!(rec.issuer, None);
    }

    fn info(serial: &str) -> CertInfo {
        CertInfo {
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(90),
            serial: serial.into(),
            sans: vec!["a.example".into()],
            leaf_der: vec![],
            chain_len: 1,
        }
    }

    #[test]
    fn a_set_destroyed_after_every_install_is_reported_not_reordered() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        let gone = OnDisk::Missing("x does not exist".into());
        let mut rec = CertRecord::default();
        // Never installed by us: a missing file is simply due, never a conflict.
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        assert_eq!(rec.damaged_in_a_row, 0);

        mark_installed(&mut rec, now, Some("aa"));
        // First time our set is gone: one re-order is allowed (someone deleted it).
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        // Seen again on later passes (e.g. the CA is down): still counted once.
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        assert_eq!(rec.damaged_in_a_row, 1);

        mark_installed(&mut rec, now, Some("bb"));
        let bad = OnDisk::Invalid {
            reason: "out/a.crt: names missing".into(),
            info: None,
        };
        let msg = note_damage(&mut rec, &bad, now).expect("second time in a row is reported");
        assert!(
            msg.contains("2 times in a row") && msg.contains("names missing"),
            "{msg}"
        );
        assert!(msg.contains("serial bb"), "{msg}");

        // Our set found intact resets the count.
        mark_installed(&mut rec, now, Some("cc"));
        assert_eq!(
            note_damage(&mut rec, &OnDisk::Present(info("cc")), now),
            None
        );
        assert_eq!(rec.damaged_in_a_row, 0);
        assert_eq!(note_damage(&mut rec, &gone, now), None);

        // Damage found long after the install is a one-off, not a conflict.
        let mut rec = CertRecord::default();
        mark_installed(&mut rec, now, Some("aa"));
        let _ = note_damage(&mut rec, &gone, now);
        mark_installed(&mut rec, now, Some("bb"));
        assert_eq!(
            note_damage(&mut rec, &gone, now + time::Duration::days(3)),
            None
        );
    }
}
