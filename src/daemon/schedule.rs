//! When each certificate next needs attention: one deadline per certificate in the
//! runtime's clock, capped at [`MAX_SLEEP`], so the daemon sleeps until the earliest one
//! with no polling loop.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

/// Re-evaluate every certificate at least this often (also when ARI is re-checked).
pub const MAX_SLEEP: Duration = Duration::from_secs(12 * 3600);

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

    /// Converts a wall-clock time from the policy into the runtime's clock, given the
    /// wall-clock time now (from the daemon's [`crate::clock::Clock`]).
    pub fn set_wall(&mut self, name: &str, when: OffsetDateTime, now: OffsetDateTime) {
        let delta = when - now;
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
        let wall = OffsetDateTime::now_utc();
        s.set_wall("x", wall + time::Duration::minutes(10), wall);
        let at = s.get("x").unwrap();
        assert!(at >= t0 + Duration::from_secs(599) && at <= t0 + Duration::from_secs(601));
        // A time in the past means now.
        s.set_wall("y", wall - time::Duration::hours(1), wall);
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
            s.set_wall("c", next, wall);
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
}
