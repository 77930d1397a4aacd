//! Kubernetes' back-off for one container (the kubelet's `flowcontrol.Backoff` per key): the
//! first retry is free, each later one waits twice as long as the one before, up to a ceiling,
//! and a long quiet spell starts it over. Restarts of crashed containers, containers that
//! failed to start and failed image pulls all wait this way. Pure: times come in as arguments.

use std::time::Duration;

use tokio::time::Instant;

/// The first delay, and its ceiling (the kubelet's 10 s and 5 min).
pub(crate) const INITIAL: Duration = Duration::from_secs(10);
pub(crate) const MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
pub(crate) struct Backoff {
    delay: Duration,
    /// The event the current delay was counted from.
    last: Option<Instant>,
}

impl Backoff {
    /// The delay the next retry waits.
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    /// The event of the last retry, if any.
    pub(crate) fn last(&self) -> Option<Instant> {
        self.last
    }

    /// When something that failed at `event` may be retried, if that is after `now`.
    pub(crate) fn hold(&self, event: Instant, now: Instant) -> Option<Instant> {
        let last = self.last?;
        if expired(event, last) {
            return None;
        }
        let until = event + self.delay;
        (now < until).then_some(until)
    }

    /// A retry of something that failed at `event`: the next one waits longer, unless the
    /// last retry is long enough ago to start over.
    pub(crate) fn next(&mut self, event: Instant) {
        self.delay = match self.last {
            Some(last) if !expired(event, last) => (self.delay * 2).min(MAX),
            _ => INITIAL,
        };
        self.last = Some(event);
    }
}

/// Quiet for twice the ceiling: the back-off starts over.
fn expired(event: Instant, last: Instant) -> bool {
    event.saturating_duration_since(last) > MAX * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn crashes_wait_ten_then_twenty_then_forty_seconds_after_each_end() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        // The first crash restarts at once.
        assert_eq!(b.hold(t0, t0), None);
        b.next(t0);
        // It crashes again a second later: it waits 10 s from that end.
        let end = t0 + s(1);
        assert_eq!(b.hold(end, end), Some(end + s(10)));
        assert_eq!(b.hold(end, end + s(10)), None);
        b.next(end);
        let end = end + s(11);
        assert_eq!(b.hold(end, end), Some(end + s(20)));
        b.next(end);
        let end = end + s(21);
        assert_eq!(b.hold(end, end), Some(end + s(40)));
    }

    #[test]
    fn the_delay_stops_at_five_minutes() {
        let mut t = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..12 {
            b.next(t);
            t += b.delay();
        }
        assert_eq!(b.delay(), MAX);
    }

    #[test]
    fn a_long_run_starts_the_back_off_over() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.next(t0);
        b.next(t0 + s(1));
        assert_eq!(b.delay(), s(20));
        // Ten minutes and more without a retry: free again, then the first delay.
        let later = t0 + s(1) + s(601);
        assert_eq!(b.hold(later, later), None);
        b.next(later);
        assert_eq!(b.delay(), INITIAL);
    }

    #[test]
    fn the_hold_counts_from_the_end_of_the_last_run() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.next(t0);
        b.next(t0 + s(1));
        // Delay 20 s; the container then ran 60 s before crashing again.
        let end = t0 + s(61);
        assert_eq!(b.hold(end, end), Some(end + s(20)));
        // Held from its end, not its start: 20 s after the end it may go.
        assert_eq!(b.hold(end, end + s(20)), None);
    }
}
