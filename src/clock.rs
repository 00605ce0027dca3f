//! The wall-clock time the pass and the daemon decide by, passed in rather than read
//! from the system, so tests can run hours of schedule in an instant. A leaf: it depends
//! on nothing in the crate.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// Where "now" comes from. Every renewal decision, ladder step and schedule reads it here.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current wall-clock time (UTC).
    fn now(&self) -> OffsetDateTime;
}

/// A shared clock handle, as the pass and the daemon keep it.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock, for production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall time that moves with tokio's clock from the moment it was made: under
/// `tokio::time::pause()` it advances exactly as far as the runtime's time does, so the
/// daemon's sleeps and its wall-clock deadlines stay in step in tests. In production
/// (unpaused) it tracks the monotonic clock, which is what the daemon's timers use anyway.
#[derive(Debug)]
pub struct TokioClock {
    base: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `base` now and advances with tokio's time.
    pub fn starting_at(base: OffsetDateTime) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.base + self.start.elapsed()
    }
}

/// A clock that only moves when told to, for unit tests of the pass and the policy.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock stopped at `t`.
    pub fn at(t: OffsetDateTime) -> Self {
        Self(Mutex::new(t))
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let c = ManualClock::at(t0);
        assert_eq!(c.now(), t0);
        c.advance(time::Duration::hours(3));
        assert_eq!(c.now(), t0 + time::Duration::hours(3));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let c = TokioClock::starting_at(t0);
        tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
        assert_eq!(c.now(), t0 + time::Duration::hours(2));
    }
}
