//! The renewal decision, as a pure function of what is on disk, the policy, the ARI window,
//! the current time and a random source. Nothing here reads files, clocks or the network,
//! so every rule is table-tested and `status`, `renew --dry-run` and the daemon all agree.
//!
//! Also home of the retry ladder (1 min, 10 min, 100 min, then daily), which is equally pure.

use std::time::Duration as StdDuration;

use rand::Rng;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::config::{FallbackRule, RenewBefore};
use crate::inventory::{CertInfo, OnDisk};
use crate::timefmt::{format_duration, rfc3339};

/// The state a certificate is in, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// Installed, usable, not yet due.
    Valid,
    /// Installed and usable, but past its renewal time.
    Due,
    /// A file of the set is missing.
    Missing,
    /// Files exist but are not a usable set.
    Invalid,
    /// Past not_after.
    Expired,
    /// Due, but the CA's order budget is spent (set by `status`, never by the policy).
    Deferred,
    /// Due, but the certificate's circuit breaker is open (set by `status`, never by the
    /// policy).
    Breaker,
    /// Installed, but a `verify` endpoint still serves another certificate (set by
    /// `status` from the record, never by the policy).
    #[serde(rename = "not-served")]
    NotServed,
}

impl CertState {
    /// The lower-case name used in tables, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Due => "due",
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Deferred => "deferred",
            Self::Breaker => "breaker",
            Self::NotServed => "not-served",
        }
    }
}

/// Which rule set the renewal time, so operators can see *why*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// No usable set on disk.
    NoCertificate,
    /// Past expiry.
    Expired,
    /// The CA's ARI suggested window.
    Ari,
    /// The configured share of the lifetime.
    Fraction,
    /// The configured fixed remaining time.
    Remaining,
    /// The user's threshold, reached before the ARI window.
    UserCap,
}

/// A suggested renewal window from the CA (RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AriWindow {
    /// Window start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Window end.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

/// The decision for one certificate, with the reason shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What `status` shows.
    pub state: CertState,
    /// Whether to order now.
    pub due: bool,
    /// When renewal is (or was) scheduled.
    pub renew_at: OffsetDateTime,
    /// The rule that set `renew_at`.
    pub rule: Rule,
    /// One human sentence explaining `renew_at`.
    pub reason: String,
}

/// Jitter moves renewal earlier by up to this share of the lifetime (step-ca uses 1/20).
pub const JITTER_SHARE: f64 = 1.0 / 20.0;

fn secs(d: Duration) -> StdDuration {
    StdDuration::from_secs(d.whole_seconds().max(0) as u64)
}

/// Decides whether and when to renew. `rng` must be seeded stably per certificate (see
/// `renew::jitter_rng`) so that repeated runs report the same `renew_at`.
pub fn decide(
    disk: &OnDisk,
    renew_before: RenewBefore,
    ari: Option<&AriWindow>,
    now: OffsetDateTime,
    rng: &mut impl Rng,
) -> Decision {
    let info = match usable(disk, now) {
        Ok(info) => info,
        Err(d) => return d,
    };
    let lifetime = info.lifetime().max(Duration::seconds(1));
    let (threshold_at, rule, mut reason) = threshold(info, lifetime, renew_before);
    // The jitter draw comes before the ARI one: the order of draws is part of what makes
    // `renew_at` stable for a given seed.
    let jitter = lifetime * (rng.random::<f64>() * JITTER_SHARE);
    let jittered = threshold_at - jitter;
    if jitter >= Duration::seconds(1) {
        reason.push_str(&format!(
            " (jittered {} earlier)",
            format_duration(secs(jitter))
        ));
    }
    let (renew_at, rule, reason) = match ari {
        Some(w) => with_ari(w, jittered, &reason, now, rng),
        None => (jittered, rule, reason),
    };
    let due = now >= renew_at;
    Decision {
        state: if due {
            CertState::Due
        } else {
            CertState::Valid
        },
        due,
        renew_at,
        rule,
        reason,
    }
}

/// Renew now: the immediate decision for a set that is missing, invalid or expired.
fn renew_now(state: CertState, rule: Rule, reason: String, now: OffsetDateTime) -> Decision {
    Decision {
        state,
        due: true,
        renew_at: now,
        rule,
        reason,
    }
}

/// The leaf's facts when the set on disk is usable and not expired; otherwise the
/// decision to renew at once.
fn usable(disk: &OnDisk, now: OffsetDateTime) -> Result<&CertInfo, Decision> {
    let info = match disk {
        OnDisk::Missing(why) => {
            let reason = format!("missing: {why}");
            return Err(renew_now(
                CertState::Missing,
                Rule::NoCertificate,
                reason,
                now,
            ));
        }
        OnDisk::Invalid { reason, .. } => {
            let reason = format!("invalid: {reason}");
            return Err(renew_now(
                CertState::Invalid,
                Rule::NoCertificate,
                reason,
                now,
            ));
        }
        OnDisk::Present(info) => info,
    };
    if now >= info.not_after {
        let reason = format!("expired at {}", crate::timefmt::rfc3339(info.not_after));
        return Err(renew_now(CertState::Expired, Rule::Expired, reason, now));
    }
    Ok(info)
}

/// The configured threshold before jitter, the rule that set it and why.
fn threshold(
    info: &CertInfo,
    lifetime: Duration,
    renew_before: RenewBefore,
) -> (OffsetDateTime, Rule, String) {
    match renew_before {
        RenewBefore::Fraction(f) => (
            info.not_after - lifetime * f,
            Rule::Fraction,
            format!(
                "{renew_before} of the {} lifetime left",
                format_duration(secs(lifetime))
            ),
        ),
        RenewBefore::Remaining(d) => {
            let d = Duration::try_from(d).unwrap_or(Duration::MAX);
            if d >= lifetime {
                // A fixed threshold longer than the lifetime would renew on every run
                // (complaint #5): fall back to half the lifetime and say so.
                (
                    info.not_after - lifetime / 2,
                    Rule::Remaining,
                    format!(
                        "renew_before {renew_before} exceeds the {} lifetime, using 50%",
                        format_duration(secs(lifetime))
                    ),
                )
            } else {
                (
                    info.not_after - d,
                    Rule::Remaining,
                    format!("{renew_before} before expiry"),
                )
            }
        }
    }
}

/// Combines the jittered user threshold with the CA's ARI window: a random point in the
/// window (now, once it opened), unless the user's threshold comes first.
fn with_ari(
    w: &AriWindow,
    jittered: OffsetDateTime,
    reason: &str,
    now: OffsetDateTime,
    rng: &mut impl Rng,
) -> (OffsetDateTime, Rule, String) {
    let ari_at = if w.start <= now {
        now
    } else {
        let span = (w.end - w.start).max(Duration::ZERO);
        w.start + span * rng.random::<f64>()
    };
    if ari_at > jittered {
        return (
            jittered,
            Rule::UserCap,
            format!(
                "{reason}; comes before the point picked in the CA's ARI window ({})",
                crate::timefmt::rfc3339(ari_at)
            ),
        );
    }
    let why = if w.start <= now {
        format!(
            "ARI: the CA's renewal window opened at {}",
            crate::timefmt::rfc3339(w.start)
        )
    } else {
        format!(
            "ARI: random point in the CA's window {} .. {}",
            crate::timefmt::rfc3339(w.start),
            crate::timefmt::rfc3339(w.end)
        )
    };
    (ari_at, Rule::Ari, why)
}

/// Let's Encrypt's retry guidance: 1 min, 10 min, 100 min, then once a day.
pub fn backoff_delay(consecutive_failures: u32) -> StdDuration {
    match consecutive_failures {
        0 => StdDuration::ZERO,
        1 => StdDuration::from_secs(60),
        2 => StdDuration::from_secs(600),
        3 => StdDuration::from_secs(6000),
        _ => StdDuration::from_secs(86400),
    }
}

/// What kind of failure stopped a renewal. It sets how soon the next attempt is made and
/// is shown by `status`, so an operator can tell "the CA is down" from "the config is wrong".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Network trouble, a timeout, a 5xx: likely to pass, so the ladder as it is.
    Transient,
    /// The CA asked us to wait (429, `rateLimited`, Retry-After): no attempt before the
    /// time it gave, whatever the ladder says.
    RateLimited,
    /// The config or a CA refusal (unauthorized, rejected identifier, unknown profile,
    /// a bad certificate from the CA): retrying within minutes cannot help, so at least
    /// the ladder's [`PERMANENT_STEP`].
    Permanent,
    /// The disk or permissions here (full disk, unwritable directory): the operator may
    /// fix it any minute, so the ladder as it is.
    Local,
}

impl ErrorClass {
    /// The name `status` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate-limited",
            Self::Permanent => "permanent",
            Self::Local => "local",
        }
    }
}

/// The ladder step a permanent failure starts at (100 minutes): a fixed config is picked
/// up by `renew --force` or a SIGHUP at once, so waiting costs nothing but CA load.
pub const PERMANENT_STEP: u32 = 3;

/// When the next attempt may happen after `failures` consecutive failures of `class`,
/// honouring a server's Retry-After if that is later.
pub fn next_attempt(
    failures: u32,
    failed_at: OffsetDateTime,
    class: ErrorClass,
    retry_after: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let step = match class {
        ErrorClass::Permanent => failures.max(PERMANENT_STEP),
        _ => failures,
    };
    let ladder = failed_at + crate::fault::scaled(backoff_delay(step));
    match retry_after {
        Some(r) if r > ladder => r,
        _ => ladder,
    }
}

/// The decision, except that an open ARI window for a certificate we have only just
/// installed is held until `hold_until` (the next ARI poll): a CA that says "renew now"
/// for every new certificate would otherwise make us renew in a tight loop.
pub fn decide_held(
    disk: &OnDisk,
    renew_before: RenewBefore,
    ari: Option<&AriWindow>,
    hold_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
    rng: &mut impl Rng,
) -> Decision {
    let held = match (ari, hold_until) {
        (Some(w), Some(until)) if w.start <= now && until > now => Some((w.start, until)),
        _ => None,
    };
    let ari = if held.is_some() { None } else { ari };
    let mut d = decide(disk, renew_before, ari, now, rng);
    if let Some((start, until)) = held
        && !d.due
        && until <= d.renew_at
    {
        d.renew_at = until;
        d.rule = Rule::Ari;
        d.reason = format!(
            "ARI: the CA's renewal window opened at {}, already when this certificate was issued; not renewing before the next ARI poll at {}",
            rfc3339(start),
            rfc3339(until)
        );
    }
    d
}

/// The decision for one certificate as the pass and `status` both make it: its own
/// stable jitter, the cached ARI window and the hold after a fresh install.
pub fn decide_cert(
    name: &str,
    renew_before: RenewBefore,
    disk: &OnDisk,
    ari: Option<&AriWindow>,
    hold_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Decision {
    let mut rng = jitter_rng(name, disk.info().map(|i| i.serial.as_str()));
    decide_held(disk, renew_before, ari, hold_until, now, &mut rng)
}

/// A per-certificate random source that is stable across runs (so `status` and the next
/// timer run agree on `renew_at`) but differs between hosts and certificates (so a fleet
/// spreads its load on the CA).
pub fn jitter_rng(name: &str, serial: Option<&str>) -> JitterRng {
    // SHA-256 rather than `DefaultHasher`, whose output may change between Rust releases
    // (an upgrade would silently move every `renew_at`). Fields are length-prefixed so
    // ("ab", "c") and ("a", "bc") differ.
    let host = hostname::get().unwrap_or_default();
    jitter_rng_on(host.as_encoded_bytes(), name, serial)
}

/// [`jitter_rng`] for a given host name (tests pin its output).
fn jitter_rng_on(host: &[u8], name: &str, serial: Option<&str>) -> JitterRng {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for field in [host, name.as_bytes(), serial.unwrap_or("").as_bytes()] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    ctx.update(&[u8::from(serial.is_some())]);
    let digest = ctx.finish();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    JitterRng { seed, counter: 0 }
}

/// A random source whose output is fixed by its seed forever: block `i` is
/// SHA-256(seed || i). `rand`'s `StdRng` documents that its algorithm may change between
/// versions, which would move every certificate's `renew_at` on an upgrade.
#[derive(Debug, Clone)]
pub struct JitterRng {
    seed: [u8; 32],
    counter: u64,
}

impl rand::RngCore for JitterRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(32) {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(&self.seed);
            ctx.update(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = ctx.finish();
            chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        }
    }
}

/// The CA (an index into primary + fallbacks, `cas` of them) the next attempt goes to,
/// after an attempt at `current` failed for the `failures_at_current`-th time in a row.
/// The list wraps: after the last fallback comes the primary again, since the CA that was
/// down first is the one most likely back by then, and stopping at the last entry would
/// leave a certificate on a CA that is down for good. With one CA it stays put.
pub fn ca_after_failure(
    current: usize,
    cas: usize,
    failures_at_current: u32,
    installed: Option<&CertInfo>,
    rule: FallbackRule,
    now: OffsetDateTime,
) -> usize {
    if cas <= 1 || failures_at_current == 0 {
        return current.min(cas.saturating_sub(1));
    }
    let expiring = installed.is_some_and(|info| {
        let remaining = info.not_after - now;
        let under = match rule.before {
            RenewBefore::Fraction(f) => info.lifetime().max(Duration::seconds(1)) * f,
            RenewBefore::Remaining(d) => Duration::try_from(d).unwrap_or(Duration::MAX),
        };
        remaining < under
    });
    if failures_at_current >= rule.after_failures.max(1) || expiring {
        (current + 1) % cas
    } else {
        current.min(cas - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::CertInfo;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use time::macros::datetime;

    fn info(nb: OffsetDateTime, na: OffsetDateTime) -> OnDisk {
        OnDisk::Present(CertInfo {
            not_before: nb,
            not_after: na,
            serial: "01".into(),
            sans: vec![],
            leaf_der: vec![],
            chain_len: 1,
        })
    }

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    #[test]
    fn decision_table() {
        let d90 = info(T0, T0 + Duration::days(90));
        let d6 = info(T0, T0 + Duration::days(6));
        let pct = RenewBefore::Fraction(1.0 / 3.0);
        let fixed30 = RenewBefore::Remaining(StdDuration::from_secs(30 * 86400));
        let cases: Vec<(&str, OnDisk, RenewBefore, OffsetDateTime, CertState, Rule)> = vec![
            (
                "missing",
                OnDisk::Missing("x".into()),
                pct,
                T0,
                CertState::Missing,
                Rule::NoCertificate,
            ),
            (
                "invalid",
                OnDisk::Invalid {
                    reason: "bad".into(),
                    info: None,
                },
                pct,
                T0,
                CertState::Invalid,
                Rule::NoCertificate,
            ),
            (
                "fresh 90d",
                d90.clone(),
                pct,
                T0 + Duration::days(1),
                CertState::Valid,
                Rule::Fraction,
            ),
            (
                "90d at day 61",
                d90.clone(),
                pct,
                T0 + Duration::days(61),
                CertState::Due,
                Rule::Fraction,
            ),
            (
                "90d expired",
                d90.clone(),
                pct,
                T0 + Duration::days(91),
                CertState::Expired,
                Rule::Expired,
            ),
            (
                "6d fresh, pct",
                d6.clone(),
                pct,
                T0 + Duration::days(1),
                CertState::Valid,
                Rule::Fraction,
            ),
            (
                "6d day 4.1, pct",
                d6.clone(),
                pct,
                T0 + Duration::hours(99),
                CertState::Due,
                Rule::Fraction,
            ),
            // A fixed 30d threshold on a 6-day cert must not renew on every run.
            (
                "6d fresh, 30d",
                d6.clone(),
                fixed30,
                T0 + Duration::days(1),
                CertState::Valid,
                Rule::Remaining,
            ),
            (
                "6d day 3.1, 30d",
                d6.clone(),
                fixed30,
                T0 + Duration::hours(75),
                CertState::Due,
                Rule::Remaining,
            ),
            (
                "90d day 59, 30d",
                d90.clone(),
                fixed30,
                T0 + Duration::days(59),
                CertState::Valid,
                Rule::Remaining,
            ),
            (
                "90d day 61, 30d",
                d90,
                fixed30,
                T0 + Duration::days(61),
                CertState::Due,
                Rule::Remaining,
            ),
        ];
        for (name, disk, rb, now, state, rule) in cases {
            let d = decide(&disk, rb, None, now, &mut StdRng::seed_from_u64(7));
            assert_eq!(d.state, state, "{name}: {d:?}");
            assert_eq!(d.rule, rule, "{name}: {d:?}");
            assert_eq!(d.due, state != CertState::Valid, "{name}");
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn jitter_only_moves_earlier_and_by_at_most_a_twentieth() {
        let disk = info(T0, T0 + Duration::days(90));
        let threshold = T0 + Duration::days(60);
        for seed in 0..500 {
            let d = decide(
                &disk,
                RenewBefore::Fraction(1.0 / 3.0),
                None,
                T0,
                &mut StdRng::seed_from_u64(seed),
            );
            assert!(d.renew_at <= threshold, "seed {seed}: {}", d.renew_at);
            assert!(
                d.renew_at >= threshold - Duration::days(90) / 20,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn ari_window_in_future_picks_point_inside() {
        let disk = info(T0, T0 + Duration::days(90));
        let w = AriWindow {
            start: T0 + Duration::days(40),
            end: T0 + Duration::days(42),
        };
        for seed in 0..100 {
            let d = decide(
                &disk,
                RenewBefore::default(),
                Some(&w),
                T0,
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(d.rule, Rule::Ari);
            assert!(d.renew_at >= w.start && d.renew_at <= w.end);
            assert!(!d.due);
            assert!(d.reason.contains("ARI"));
        }
    }

    #[test]
    fn ari_window_open_means_now() {
        let disk = info(T0, T0 + Duration::days(90));
        let w = AriWindow {
            start: T0 + Duration::days(1),
            end: T0 + Duration::days(2),
        };
        let now = T0 + Duration::days(5);
        let d = decide(
            &disk,
            RenewBefore::default(),
            Some(&w),
            now,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!((d.rule, d.due, d.renew_at), (Rule::Ari, true, now));
    }

    #[test]
    fn user_threshold_caps_a_late_ari_window() {
        let disk = info(T0, T0 + Duration::days(90));
        let w = AriWindow {
            start: T0 + Duration::days(80),
            end: T0 + Duration::days(85),
        };
        let d = decide(
            &disk,
            RenewBefore::default(),
            Some(&w),
            T0,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(d.rule, Rule::UserCap);
        assert!(d.renew_at <= T0 + Duration::days(60), "{d:?}");
        assert!(
            d.renew_at >= T0 + Duration::days(60) - Duration::days(90) / 20,
            "{d:?}"
        );
        assert!(d.reason.contains("ARI window"), "{d:?}");
    }

    #[test]
    fn backoff_ladder() {
        let steps: Vec<u64> = (0..6).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(steps, vec![0, 60, 600, 6000, 86400, 86400]);
        let later = T0 + Duration::hours(5);
        let t = ErrorClass::Transient;
        assert_eq!(next_attempt(1, T0, t, Some(later)), later);
        assert_eq!(next_attempt(2, T0, t, Some(T0)), T0 + Duration::minutes(10));
        // A permanent failure starts at the third step: retrying within minutes cannot help.
        let p = ErrorClass::Permanent;
        assert_eq!(next_attempt(1, T0, p, None), T0 + Duration::seconds(6000));
        assert_eq!(next_attempt(4, T0, p, None), T0 + Duration::days(1));
        assert_eq!(
            next_attempt(1, T0, ErrorClass::Local, None),
            T0 + Duration::minutes(1)
        );
    }

    /// The jitter must not move when Rust or `rand` is upgraded: these values are pinned.
    #[test]
    fn jitter_is_stable_across_releases() {
        use rand::RngCore;
        let mut a = jitter_rng_on(b"host-a", "www", Some("01ab"));
        let first = a.next_u64();
        let mut again = jitter_rng_on(b"host-a", "www", Some("01ab"));
        assert_eq!(first, again.next_u64());
        assert_eq!(
            first, 0x69cd_c22d_e8dd_80cb,
            "pinned value changed: {first:#x}"
        );
        // Field boundaries matter, and so do host, name and serial.
        let others = [
            jitter_rng_on(b"host-b", "www", Some("01ab")).next_u64(),
            jitter_rng_on(b"host-a", "api", Some("01ab")).next_u64(),
            jitter_rng_on(b"host-a", "www", Some("01ac")).next_u64(),
            jitter_rng_on(b"host-a", "www", None).next_u64(),
            jitter_rng_on(b"host-aw", "ww", Some("01ab")).next_u64(),
        ];
        for o in others {
            assert_ne!(o, first);
        }
        let x: f64 = jitter_rng_on(b"h", "n", None).random();
        assert!((0.0..1.0).contains(&x));
    }
    fn cert_lasting(not_before: OffsetDateTime, days: i64) -> CertInfo {
        CertInfo {
            not_before,
            not_after: not_before + Duration::days(days),
            serial: "01".into(),
            sans: vec!["a.example".into()],
            leaf_der: vec![],
            chain_len: 2,
        }
    }

    #[test]
    fn fallback_after_n_failures_or_the_first_one_when_close_to_expiry() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(1000);
        let rule = FallbackRule {
            after_failures: 3,
            before: crate::config::DEFAULT_FALLBACK_BEFORE,
        };
        let info = cert_lasting(t0, 90);
        let fresh = t0 + Duration::days(60); // 30 of 90 days left: above 1/4
        let late = t0 + Duration::days(70); // 20 of 90 days left: under 1/4
        // Counting failures at the primary (2 CAs).
        assert_eq!(ca_after_failure(0, 2, 0, Some(&info), rule, fresh), 0);
        assert_eq!(ca_after_failure(0, 2, 1, Some(&info), rule, fresh), 0);
        assert_eq!(ca_after_failure(0, 2, 2, Some(&info), rule, fresh), 0);
        assert_eq!(ca_after_failure(0, 2, 3, Some(&info), rule, fresh), 1);
        // Close to expiry, the first failure moves on; no failure never does.
        assert_eq!(ca_after_failure(0, 2, 1, Some(&info), rule, late), 1);
        assert_eq!(ca_after_failure(0, 2, 0, Some(&info), rule, late), 0);
        // Nothing installed: only the count matters.
        assert_eq!(ca_after_failure(0, 2, 1, None, rule, late), 0);
        assert_eq!(ca_after_failure(0, 2, 3, None, rule, late), 1);
        // The list wraps from the last fallback to the primary.
        assert_eq!(ca_after_failure(1, 3, 3, None, rule, fresh), 2);
        assert_eq!(ca_after_failure(2, 3, 3, None, rule, fresh), 0);
        // One CA: nowhere to go.
        assert_eq!(ca_after_failure(0, 1, 9, Some(&info), rule, late), 0);
        // A recorded CA index beyond a shortened list is clamped, not an out-of-range.
        assert_eq!(ca_after_failure(5, 2, 1, None, rule, fresh), 1);
        // A duration threshold, and one longer than the lifetime (always close).
        let by_time = FallbackRule {
            after_failures: 3,
            before: RenewBefore::Remaining(StdDuration::from_secs(25 * 86400)),
        };
        assert_eq!(ca_after_failure(0, 2, 1, Some(&info), by_time, fresh), 0);
        assert_eq!(ca_after_failure(0, 2, 1, Some(&info), by_time, late), 1);
        let longer = FallbackRule {
            after_failures: 3,
            before: RenewBefore::Remaining(StdDuration::from_secs(400 * 86400)),
        };
        assert_eq!(ca_after_failure(0, 2, 1, Some(&info), longer, t0), 1);
        // after_failures = 1 moves on the first failure.
        let eager = FallbackRule {
            after_failures: 1,
            ..rule
        };
        assert_eq!(ca_after_failure(0, 2, 1, None, eager, fresh), 1);
    }
}
