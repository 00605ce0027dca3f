//! The two limits on how many orders certkeeper sends, as pure functions of lists of
//! timestamps: the per-CA order budget (`acme.max_new_orders`, a sliding window kept in the
//! CA's record) and the per-certificate circuit breaker (`max_orders_per_cert` successful
//! orders in 24 h, kept in the certificate's record). Nothing here reads clocks or files,
//! so the pass, `status` and the tests agree on the arithmetic.

use time::{Duration, OffsetDateTime};

use crate::config::OrderLimit;
use crate::timefmt::rfc3339;

/// The breaker's window: successful orders for one certificate are counted over 24 h.
pub const BREAKER_WINDOW: Duration = Duration::hours(24);

/// The limit's window as a `time::Duration`.
fn window_of(limit: &OrderLimit) -> Duration {
    Duration::try_from(limit.window).unwrap_or(Duration::MAX)
}

/// Drops the timestamps that fell out of the window ending at `now` and sorts the rest, so
/// the lists kept in the state stay as small as the limit. Timestamps after `now` (the
/// clock went back) are kept: counting them can only make the agent more careful.
pub fn prune(times: &mut Vec<OffsetDateTime>, window: Duration, now: OffsetDateTime) {
    times.retain(|t| *t + window > now);
    times.sort();
}

/// When the window of `times` (sorted, pruned) next has room for one more entry, given at
/// most `max` entries per `window`; `None` if it has room now.
pub fn reopens_at(times: &[OffsetDateTime], max: u32, window: Duration) -> Option<OffsetDateTime> {
    let max = max as usize;
    if times.len() < max {
        return None;
    }
    // The entry whose expiry brings the count below `max`, rounded up to the second: the
    // time is shown in whole seconds (status, logs), and one who waits until the time
    // shown must find the window open.
    Some(ceil_second(times[times.len() - max] + window))
}

/// `t` rounded up to a whole second.
fn ceil_second(t: OffsetDateTime) -> OffsetDateTime {
    if t.nanosecond() == 0 {
        return t;
    }
    t.replace_nanosecond(0).expect("0 is a valid nanosecond") + Duration::seconds(1)
}

/// Takes one unit of the order budget at `now`: records it and returns `Ok`, or returns
/// the time the budget next allows an order and records nothing. The caller does this
/// inside one locked read-modify-write of the CA's record, so concurrent certificates
/// never overspend.
pub fn spend(
    times: &mut Vec<OffsetDateTime>,
    limit: &OrderLimit,
    now: OffsetDateTime,
) -> Result<(), OffsetDateTime> {
    let window = window_of(limit);
    prune(times, window, now);
    match reopens_at(times, limit.orders, window) {
        Some(next) => Err(next.max(now)),
        None => {
            times.push(now);
            times.sort();
            Ok(())
        }
    }
}

/// Records one successful order for the breaker, pruned to [`BREAKER_WINDOW`].
pub fn note_issued(times: &mut Vec<OffsetDateTime>, now: OffsetDateTime) {
    prune(times, BREAKER_WINDOW, now);
    times.push(now);
    times.sort();
}

/// The breaker is open: `count` successful orders in the last 24 h reached the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// Successful orders in the window.
    pub count: usize,
    /// The configured limit.
    pub max: u32,
    /// When the next order is allowed.
    pub reopens: OffsetDateTime,
}

impl Tripped {
    /// The operator's message, the same in the log, the outcome and `status`.
    pub fn message(&self, name: &str) -> String {
        format!(
            "circuit breaker: {} certificates issued for {name} in the last 24h (max_orders_per_cert = {}); next order allowed at {}",
            self.count,
            self.max,
            rfc3339(self.reopens)
        )
    }
}

/// Whether the breaker refuses an order for a certificate with these successful orders.
pub fn breaker(issued: &[OffsetDateTime], max: u32, now: OffsetDateTime) -> Option<Tripped> {
    let mut recent = issued.to_vec();
    prune(&mut recent, BREAKER_WINDOW, now);
    let reopens = reopens_at(&recent, max, BREAKER_WINDOW)?;
    Some(Tripped {
        count: recent.len(),
        max,
        reopens: reopens.max(now),
    })
}

/// The outcome of a certificate deferred because the CA's order budget is spent.
pub fn deferred_message(limit: &OrderLimit, next: OffsetDateTime) -> String {
    format!(
        "deferred: the CA's order budget ({limit}) is spent; next order allowed at {}",
        rfc3339(next)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(s)
    }

    fn limit(orders: u32, secs: u64) -> OrderLimit {
        OrderLimit {
            orders,
            window: std::time::Duration::from_secs(secs),
        }
    }

    #[test]
    fn prune_keeps_only_the_window_sorted() {
        let mut v = vec![t(30), t(0), t(10), t(50), t(200)];
        prune(&mut v, Duration::seconds(20), t(40));
        // t(10) + 20 = 30 <= 40 is out; t(30) is in; a timestamp after now is kept.
        assert_eq!(v, vec![t(30), t(50), t(200)]);
        let mut v = vec![t(0)];
        prune(&mut v, Duration::seconds(20), t(20));
        assert!(v.is_empty(), "an entry exactly one window old has expired");
    }

    #[test]
    fn spend_grants_up_to_the_limit_then_defers_to_the_oldest_expiry() {
        let l = limit(2, 20);
        let mut v = Vec::new();
        assert_eq!(spend(&mut v, &l, t(0)), Ok(()));
        assert_eq!(spend(&mut v, &l, t(5)), Ok(()));
        // Spent: the first entry leaves the window at 0 + 20.
        assert_eq!(spend(&mut v, &l, t(6)), Err(t(20)));
        assert_eq!(v.len(), 2, "a refused spend records nothing");
        assert_eq!(spend(&mut v, &l, t(19)), Err(t(20)));
        // At 20 the first has expired: one unit free again, then the next is at 5 + 20.
        assert_eq!(spend(&mut v, &l, t(20)), Ok(()));
        assert_eq!(spend(&mut v, &l, t(21)), Err(t(25)));
        assert_eq!(v, vec![t(5), t(20)], "the list stays pruned to the window");
    }

    #[test]
    fn a_list_longer_than_a_lowered_limit_waits_for_enough_expiries() {
        // 300 recorded, then the operator lowers the limit to 2: room only once all but
        // one have expired.
        let mut v: Vec<_> = (0..5).map(t).collect();
        assert_eq!(spend(&mut v, &limit(2, 100), t(50)), Err(t(103)));
        assert_eq!(spend(&mut v, &limit(2, 100), t(103)), Ok(()));
    }

    #[test]
    fn breaker_trips_at_max_and_reopens_a_day_after_the_oldest_counted() {
        let mut issued = Vec::new();
        note_issued(&mut issued, t(0));
        note_issued(&mut issued, t(10));
        assert_eq!(breaker(&issued, 3, t(11)), None);
        note_issued(&mut issued, t(20));
        let tr = breaker(&issued, 3, t(21)).expect("three in a day trips max 3");
        assert_eq!(tr.count, 3);
        assert_eq!(tr.reopens, t(0) + BREAKER_WINDOW);
        let msg = tr.message("www");
        assert!(
            msg.starts_with(
                "circuit breaker: 3 certificates issued for www in the last 24h (max_orders_per_cert = 3); next order allowed at "
            ),
            "{msg}"
        );
        // Max 2 with three recorded: the one that matters is the second.
        assert_eq!(
            breaker(&issued, 2, t(21)).unwrap().reopens,
            t(10) + BREAKER_WINDOW
        );
        // A day after the first, one slot is free again.
        assert_eq!(breaker(&issued, 3, t(0) + BREAKER_WINDOW), None);
        // Old entries are pruned when a new one is noted.
        note_issued(&mut issued, t(0) + BREAKER_WINDOW + Duration::seconds(15));
        assert_eq!(issued.len(), 2);
    }

    #[test]
    fn deferred_message_names_the_limit_and_the_time() {
        let m = deferred_message(&OrderLimit::default(), t(0));
        assert_eq!(
            m,
            format!(
                "deferred: the CA's order budget (300 per 3h) is spent; next order allowed at {}",
                rfc3339(t(0))
            )
        );
    }
}
