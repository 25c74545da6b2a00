//! What the activation service remembers about its clients, bounded in
//! count and in time whatever they send. Pure: time is a parameter.
//!
//! | record | kept while | forgotten | at most |
//! |---|---|---|---|
//! | a filter VM that polls readiness ([`Pollers`]) | it has a poll outstanding, or ended one less than [`POLLER_IDLE_TIMEOUT`] ago | idle for [`POLLER_IDLE_TIMEOUT`] | `max` VMs, a new one beyond is refused; [`MAX_POLLS_PER_VM`] polls held per VM |
//! | the last activation of a revision ([`ActivationRecords`]) | the revision is in the gateway plan and was activated less than [`ACTIVATION_RECORD_TTL`] ago | with the revision, or idle for [`ACTIVATION_RECORD_TTL`] | one per revision of the plan |

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use revgate_model::plan::ObjectKey;

use super::Activation;

/// A filter VM that ended its last poll this long ago and has not polled
/// since is gone (or cut off) and stops counting. A live VM always has a
/// poll outstanding: it polls again as soon as one is answered, and after
/// a failure within the filter's longest backoff (1.25 s).
pub const POLLER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A revision not activated for this long loses its activation record
/// (its count and last activation in `revgate get activity`).
pub const ACTIVATION_RECORD_TTL: Duration = Duration::from_secs(15 * 60);

/// One filter VM: its Envoy node id and its reporter id.
pub type FilterVm = (String, String);

#[derive(Debug, Clone, Copy)]
struct Poller {
    /// The readiness version the VM was last answered (or said it had).
    answered: u64,
    /// Polls of this VM being held right now.
    outstanding: u32,
    /// When a poll of this VM last began or ended.
    seen: Instant,
}

impl Poller {
    fn is_live(&self, now: Instant) -> bool {
        self.outstanding > 0 || now.saturating_duration_since(self.seen) < POLLER_IDLE_TIMEOUT
    }
}

/// Polls of one filter VM held at once. A root context of the filter has
/// one poll outstanding; more appear while a configuration change runs an
/// old and a new root context side by side, or before the server noticed
/// that the client of an earlier poll left.
pub const MAX_POLLS_PER_VM: u32 = 4;

/// Why a poll was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRefused {
    /// `limit` VMs are tracked: a new one is not taken.
    TooManyVms { limit: usize },
    /// The VM has [`MAX_POLLS_PER_VM`] polls held already.
    TooManyPolls,
}

/// What each filter VM (node, reporter) was last told, and whether it is
/// still there.
#[derive(Debug)]
pub struct Pollers {
    by_vm: BTreeMap<FilterVm, Poller>,
    max: usize,
    /// When gone VMs are next swept out, so a steady stream of new ones
    /// costs one pass per [`POLLER_IDLE_TIMEOUT`], not one per poll.
    next_sweep: Option<Instant>,
}

impl Pollers {
    /// Tracks at most `max` filter VMs.
    pub fn new(max: usize) -> Self {
        Self { by_vm: BTreeMap::new(), max, next_sweep: None }
    }

    /// VMs tracked now, live or not yet swept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_vm.len()
    }

    /// A poll of `vm`, which already has version `after`, begins. A VM not
    /// tracked yet is refused when `max` live ones are; a VM with
    /// [`MAX_POLLS_PER_VM`] polls held, too.
    pub fn begin(&mut self, vm: &FilterVm, after: u64, now: Instant) -> Result<(), PollRefused> {
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.sweep(now);
        }
        if let Some(poller) = self.by_vm.get_mut(vm) {
            if poller.outstanding >= MAX_POLLS_PER_VM {
                return Err(PollRefused::TooManyPolls);
            }
            *poller = Poller { answered: after, outstanding: poller.outstanding + 1, seen: now };
            return Ok(());
        }
        if self.by_vm.len() >= self.max {
            // Gone VMs leave at the next sweep, so a slot frees at most one
            // idle timeout late; a flood of new VMs costs no pass each.
            return Err(PollRefused::TooManyVms { limit: self.max });
        }
        self.by_vm.insert(vm.clone(), Poller { answered: after, outstanding: 1, seen: now });
        Ok(())
    }

    /// `vm` was answered `version`.
    pub fn answered(&mut self, vm: &FilterVm, version: u64, now: Instant) {
        if let Some(poller) = self.by_vm.get_mut(vm) {
            poller.answered = version;
            poller.seen = now;
        }
    }

    /// A poll of `vm` ended, answered or not (the client may have left).
    pub fn end(&mut self, vm: &FilterVm, now: Instant) {
        if let Some(poller) = self.by_vm.get_mut(vm) {
            poller.outstanding = poller.outstanding.saturating_sub(1);
            poller.seen = now;
        }
    }

    /// Forgets the VMs that are gone.
    pub fn sweep(&mut self, now: Instant) {
        self.by_vm.retain(|_, poller| poller.is_live(now));
        self.next_sweep = Some(now + POLLER_IDLE_TIMEOUT);
    }

    /// Live VMs, with the version each was answered.
    pub fn live(&self, now: Instant) -> impl Iterator<Item = (&FilterVm, u64)> {
        self.by_vm.iter().filter(move |(_, poller)| poller.is_live(now)).map(|(vm, poller)| (vm, poller.answered))
    }

    /// Whether every live VM has been answered `version` or later, and if
    /// not, the moment the first lagging VM counts as gone should it stay
    /// silent (`None`: every lagging VM has a poll outstanding, which the
    /// new version answers at once).
    pub fn waiting_for(&self, version: u64, now: Instant) -> Waiting {
        let mut waiting = Waiting::Done;
        for poller in self.by_vm.values().filter(|poller| poller.is_live(now) && poller.answered < version) {
            let gone_at = (poller.outstanding == 0).then(|| poller.seen + POLLER_IDLE_TIMEOUT);
            waiting = match (waiting, gone_at) {
                (Waiting::Done, gone_at) => Waiting::Lagging { gone_at },
                (Waiting::Lagging { gone_at: Some(a) }, Some(b)) => Waiting::Lagging { gone_at: Some(a.min(b)) },
                (Waiting::Lagging { gone_at: None }, Some(b)) => Waiting::Lagging { gone_at: Some(b) },
                (lagging, None) => lagging,
            };
        }
        waiting
    }
}

/// Whether a version has reached every live filter VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Done,
    /// Some live VM lags; `gone_at` is when the first silent one stops counting.
    Lagging {
        gone_at: Option<Instant>,
    },
}

/// Per revision, how many activations were requested and the last one.
#[derive(Debug, Default)]
pub struct ActivationRecords {
    by_revision: BTreeMap<ObjectKey, (u64, Activation)>,
}

impl ActivationRecords {
    /// Records an activation of a revision the plan has.
    pub fn record(&mut self, activation: Activation) {
        let entry = self.by_revision.entry(activation.revision.clone()).or_insert((0, activation.clone()));
        entry.0 += 1;
        entry.1 = activation;
    }

    /// Forgets the revisions that left the plan (`known` is false) and those
    /// not activated within [`ACTIVATION_RECORD_TTL`] of `now_ms`.
    pub fn forget(&mut self, known: impl Fn(&ObjectKey) -> bool, now_ms: u64) {
        let ttl_ms = u64::try_from(ACTIVATION_RECORD_TTL.as_millis()).unwrap_or(u64::MAX);
        self.by_revision.retain(|key, (_, last)| known(key) && now_ms.saturating_sub(last.at_unix_ms) < ttl_ms);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &(u64, Activation))> {
        self.by_revision.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_revision.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn vm(n: u32) -> FilterVm {
        ("gw".to_owned(), format!("gw/1/{n}"))
    }

    /// A VM that polls and is answered `version` at once, as a filter does.
    fn polled(pollers: &mut Pollers, n: u32, version: u64, now: Instant) {
        pollers.begin(&vm(n), 0, now).expect("room for the VM");
        pollers.answered(&vm(n), version, now);
        pollers.end(&vm(n), now);
    }

    #[test]
    fn a_vm_that_stops_polling_is_forgotten_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(10);
        polled(&mut pollers, 1, 7, t0);
        assert_eq!(pollers.live(t0 + POLLER_IDLE_TIMEOUT - S).count(), 1, "between polls it still counts");
        assert_eq!(pollers.live(t0 + POLLER_IDLE_TIMEOUT).count(), 0, "idle for the timeout: gone");
        pollers.sweep(t0 + POLLER_IDLE_TIMEOUT);
        assert_eq!(pollers.len(), 0, "and its entry is freed");
    }

    #[test]
    fn a_vm_with_a_poll_outstanding_stays_however_long_the_poll_is_held() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(10);
        pollers.begin(&vm(1), 7, t0).expect("room");
        let later = t0 + 10 * POLLER_IDLE_TIMEOUT;
        pollers.sweep(later);
        assert_eq!(pollers.live(later).collect::<Vec<_>>(), vec![(&vm(1), 7)]);
        pollers.end(&vm(1), later);
        assert_eq!(pollers.live(later + POLLER_IDLE_TIMEOUT).count(), 0, "the client left after its poll");
    }

    #[test]
    fn new_vms_beyond_the_limit_are_refused_until_gone_ones_are_forgotten() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(2);
        polled(&mut pollers, 1, 7, t0);
        pollers.begin(&vm(2), 7, t0).expect("room for a second");
        assert_eq!(pollers.begin(&vm(3), 7, t0 + S), Err(PollRefused::TooManyVms { limit: 2 }));
        assert_eq!(pollers.begin(&vm(1), 7, t0 + S), Ok(()), "a VM already tracked keeps polling");
        pollers.end(&vm(1), t0 + S);
        let later = t0 + S + POLLER_IDLE_TIMEOUT;
        assert_eq!(pollers.begin(&vm(3), 7, later), Ok(()), "VM 1 went silent and its slot is free");
        assert_eq!(pollers.len(), 2, "VM 2 is still polling, VM 3 took VM 1's place");
    }

    #[test]
    fn one_vm_cannot_hold_more_than_a_few_polls() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(10);
        for _ in 0..MAX_POLLS_PER_VM {
            pollers.begin(&vm(1), 7, t0).expect("a poll");
        }
        assert_eq!(pollers.begin(&vm(1), 7, t0), Err(PollRefused::TooManyPolls));
        pollers.end(&vm(1), t0);
        assert_eq!(pollers.begin(&vm(1), 7, t0), Ok(()), "one ended: room for the next");
    }

    #[test]
    fn a_flood_of_vms_never_grows_past_the_limit() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(100);
        let mut refused = 0;
        for n in 0..10_000u32 {
            // Ten thousand made-up VMs over 50 s, each polling once.
            let now = t0 + Duration::from_millis(u64::from(n) * 5);
            match pollers.begin(&vm(n), 0, now) {
                Ok(()) => pollers.end(&vm(n), now),
                Err(_) => refused += 1,
            }
            assert!(pollers.len() <= 100);
        }
        assert!(refused > 0 && refused < 10_000, "refused {refused}");
    }

    #[test]
    fn waiting_for_a_version_counts_only_live_vms_and_says_when_a_silent_one_is_gone() {
        let t0 = Instant::now();
        let mut pollers = Pollers::new(10);
        polled(&mut pollers, 1, 7, t0);
        pollers.begin(&vm(2), 7, t0).expect("room");
        assert_eq!(pollers.waiting_for(7, t0), Waiting::Done);
        assert_eq!(
            pollers.waiting_for(8, t0 + S),
            Waiting::Lagging { gone_at: Some(t0 + POLLER_IDLE_TIMEOUT) },
            "VM 1 is between polls; VM 2's outstanding poll is answered at once"
        );
        pollers.answered(&vm(2), 8, t0 + S);
        assert_eq!(pollers.waiting_for(8, t0 + POLLER_IDLE_TIMEOUT), Waiting::Done, "VM 1 is gone: no wait for it");
        polled(&mut pollers, 1, 8, t0 + 2 * S);
        assert_eq!(pollers.waiting_for(8, t0 + 2 * S), Waiting::Done, "VM 1 polled again and heard it");
        assert_eq!(
            pollers.waiting_for(9, t0 + 2 * S),
            Waiting::Lagging { gone_at: Some(t0 + 2 * S + POLLER_IDLE_TIMEOUT) }
        );
    }

    fn activation(revision: &str, at_unix_ms: u64) -> Activation {
        Activation { revision: ObjectKey::new("default", revision), node: "gw".into(), held: 1, at_unix_ms }
    }

    #[test]
    fn activation_records_go_with_their_revision_or_after_the_ttl() {
        let ttl_ms = u64::try_from(ACTIVATION_RECORD_TTL.as_millis()).expect("ms");
        let mut records = ActivationRecords::default();
        records.record(activation("hello-00001", 0));
        records.record(activation("hello-00001", 1_000));
        records.record(activation("gone-00001", 1_000));
        records.forget(|key| key.name != "gone-00001", 2_000);
        let kept: Vec<(String, u64)> = records.iter().map(|(key, (count, _))| (key.name.clone(), *count)).collect();
        assert_eq!(kept, vec![("hello-00001".to_owned(), 2)], "the deleted revision's record went with it");
        records.forget(|_| true, 1_000 + ttl_ms - 1);
        assert_eq!(records.len(), 1, "activated within the TTL");
        records.forget(|_| true, 1_000 + ttl_ms);
        assert_eq!(records.len(), 0, "idle for the TTL: forgotten");
    }
}
