//! How long a crashed instance waits before its process is started again.
//!
//! Like the kubelet's `CrashLoopBackOff`, but on a local-development scale:
//! the first restart comes after 1 s and each further crash doubles the
//! delay, up to 30 s. A process that stayed ready for a minute is considered
//! healthy again, so its next crash starts over at 1 s.

use std::time::Duration;

pub(crate) const INITIAL: Duration = Duration::from_secs(1);
pub(crate) const MAX: Duration = Duration::from_secs(30);
/// Ready this long before a crash resets the delay.
pub(crate) const RESET_AFTER: Duration = Duration::from_secs(60);

/// The restart delay of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// The process crashed after having been ready for `ready_for` (`None`
    /// if it never became ready): how long to wait before the restart.
    pub(crate) fn on_crash(&mut self, ready_for: Option<Duration>) -> Duration {
        if ready_for.is_some_and(|ready| ready >= RESET_AFTER) {
            self.next = INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_up_to_the_cap_and_resets_after_a_healthy_minute() {
        let mut backoff = Backoff::default();
        // (ready for, expected delay)
        let steps = [
            (None, S(1)),
            (None, S(2)),
            (Some(S(5)), S(4)),
            (None, S(8)),
            (None, S(16)),
            (None, S(30)),
            (None, S(30)),
            (Some(S(59)), S(30)),
            (Some(S(60)), S(1)),
            (None, S(2)),
            (Some(S(3600)), S(1)),
        ];
        for (i, (ready_for, want)) in steps.into_iter().enumerate() {
            assert_eq!(backoff.on_crash(ready_for), want, "crash {i} after ready for {ready_for:?}");
        }
    }
}
