//! Channels whose reply queue RabbitMQ refused, and when each is tried again.
//!
//! A queue declared before with other arguments, deleted between the
//! declaration and the consume, or not permitted to the bridge's user is one
//! channel's problem: that channel is reported `broker_refused` with the
//! broker's words and tried again with a growing pause (5 s, doubling, at
//! most 5 minutes), while every other channel goes on. Before, such a queue
//! ended the session of every channel, and the session's next start met the
//! same refusal: no channel sent anything until an operator fixed the queue.

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// The first pause after a refusal.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest pause between tries.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// Refused channels of one session, by name.
#[derive(Default)]
pub(crate) struct RefusedChannels {
    by_name: HashMap<String, Refusal>,
}

struct Refusal {
    retry_at: Instant,
    pauses: ExponentialBackoff,
}

impl RefusedChannels {
    /// Whether `name` was refused and its next try is not due at `now`.
    pub(crate) fn waiting(&self, name: &str, now: Instant) -> bool {
        self.by_name.get(name).is_some_and(|r| r.retry_at > now)
    }

    /// Records that the broker refused `name` at `now`: the pause until its
    /// next try, longer at each refusal in a row.
    pub(crate) fn refuse(&mut self, name: &str, now: Instant) -> Duration {
        let refusal = self
            .by_name
            .entry(name.to_owned())
            .or_insert_with(|| Refusal {
                retry_at: now,
                pauses: ExponentialBuilder::default()
                    .with_min_delay(FIRST_RETRY)
                    .with_max_delay(LONGEST_RETRY)
                    .without_max_times()
                    .build(),
            });
        let pause = refusal.pauses.next().unwrap_or(LONGEST_RETRY);
        refusal.retry_at = now + pause;
        pause
    }

    /// `name` is served (or gone): forgets its refusals; whether it had any.
    pub(crate) fn forget(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// When the next refused channel is due, if any is.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.by_name.values().map(|r| r.retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_channel_waits_longer_at_each_refusal_up_to_five_minutes() {
        let mut refused = RefusedChannels::default();
        let now = Instant::now();
        assert!(!refused.waiting("acme", now), "never refused");
        assert_eq!(refused.next_retry(), None);

        let pauses: Vec<Duration> = (0..10).map(|_| refused.refuse("acme", now)).collect();
        assert_eq!(pauses[0], FIRST_RETRY);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(pauses[9], LONGEST_RETRY);
        assert!(refused.waiting("acme", now));
        assert!(!refused.waiting("acme", now + LONGEST_RETRY));
        assert!(!refused.waiting("other", now), "one channel's refusal only");

        refused.refuse("beta", now);
        assert_eq!(refused.next_retry(), Some(now + FIRST_RETRY));
        assert!(refused.forget("beta"));
        assert!(!refused.forget("beta"));
        assert_eq!(refused.next_retry(), Some(now + LONGEST_RETRY));
    }
}
