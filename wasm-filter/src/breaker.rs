//! Knative's breaker across Envoy's worker VMs: at most
//! `container_concurrency × ready_endpoints` requests in flight per revision.
//!
//! Each worker thread runs its own VM, so the in-flight count of a revision
//! lives in Envoy's shared data (one key per revision, visible to every VM of
//! the plugin) and changes only by compare-and-swap: read the value and its
//! CAS token, compute the new value with a pure function ([`admit`],
//! [`release`]), write it back with the token, and start over when another VM
//! wrote in between.
//!
//! # Creating a key
//!
//! Envoy writes a key that does not exist yet whatever CAS token comes with
//! the write, so two VMs that both read a revision's key as absent would both
//! write it, and one would overwrite the other's count (two requests in
//! flight under `containerConcurrency: 1`). So a count is never written to an
//! absent key: the key is first created as 0 under a lock ([`create`]), and
//! counting starts over against the created key with its token.
//!
//! The lock is itself a shared-data key, created by every VM's start
//! ([`prepare`]) if absent. Envoy starts a plugin's first VM (its
//! configuration canary, on the main thread) before any VM of the plugin
//! serves a request, so the lock exists before anyone counts. It holds the
//! holder's clock reading; a holder that has not let go after
//! [`LOCK_LEASE_NS`] is taken to be gone (its VM ended mid-callback) and the
//! lock is taken over.
//!
//! Known limit, accepted because shared data cannot be enumerated: a VM that
//! dies with requests in flight leaves them counted. The filter never panics,
//! so VMs end only by configuration change, and an old VM still runs `on_log`
//! for its streams and releases their slots.

use crate::revision::RevisionKey;

/// Attempts at one compare-and-swap before giving up. Contention is at most
/// one writer per worker thread, so a handful suffices; giving up fails open
/// (the request is admitted uncounted) rather than holding it forever.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Prefix of the shared-data keys holding in-flight counts.
const KEY_PREFIX: &str = "revgate.inflight/";

/// The shared-data key of the lock under which keys are created: 0 when
/// free, else the holder's clock reading in ns.
pub const CREATE_LOCK_KEY: &str = "revgate.create-lock";

/// Reads of a taken create lock before [`create`] gives up for now. The
/// holder lets go within a few host calls, unless its thread is descheduled.
pub const LOCK_ATTEMPTS: usize = 256;

/// How long a holder may keep the create lock before it is taken to be gone.
/// A holder keeps it for a few host calls; only a VM that ended mid-callback
/// keeps it longer.
pub const LOCK_LEASE_NS: u64 = 1_000_000_000;

/// The shared-data key of a revision's in-flight count.
pub fn counter_key(revision: &RevisionKey) -> String {
    format!("{KEY_PREFIX}{}/{}", revision.namespace, revision.revision)
}

/// Reads a stored count: 8 bytes, little-endian. Anything else (absent,
/// corrupted) reads as 0, which the next write repairs.
pub fn decode_count(raw: Option<&[u8]>) -> u64 {
    raw.and_then(|raw| <[u8; 8]>::try_from(raw).ok()).map_or(0, u64::from_le_bytes)
}

pub fn encode_count(count: u64) -> [u8; 8] {
    count.to_le_bytes()
}

/// The count after admitting one more request, or `None` at capacity.
pub fn admit(in_flight: u64, capacity: u64) -> Option<u64> {
    (in_flight < capacity).then(|| in_flight.saturating_add(1))
}

/// The count after one admitted request finished (never below 0).
pub fn release(in_flight: u64) -> Option<u64> {
    Some(in_flight.saturating_sub(1))
}

/// Shared data as the breaker needs it; the host's implementation wraps
/// `get_shared_data`/`set_shared_data`, tests use an in-memory fake.
pub trait SharedStore {
    /// The value and its CAS token (`None` when the key was never written).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes the value if the key's CAS token still is `cas` (`None`:
    /// unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("shared data changed since it was read (CAS mismatch)")]
    CasMismatch,
    #[error("shared data call failed: {0}")]
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    #[error("updating shared counter `{key}` failed: {source}")]
    Store { key: String, source: StoreError },
    #[error("shared counter `{key}` kept changing under {MAX_CAS_ATTEMPTS} compare-and-swap attempts")]
    Contended { key: String },
    /// Another VM is creating a key right now; ask again shortly.
    #[error("shared counter `{key}` cannot be created now: another VM holds the create lock")]
    Busy { key: String },
}

/// Makes the create lock exist, free, unless it already does. Called as
/// each VM starts, before it counts anything (see the module doc).
pub fn prepare(store: &dyn SharedStore) -> Result<(), BreakerError> {
    let store_error = |source| BreakerError::Store { key: CREATE_LOCK_KEY.to_owned(), source };
    let (_, cas) = store.get(CREATE_LOCK_KEY).map_err(store_error)?;
    if cas.is_none() {
        store.set(CREATE_LOCK_KEY, &encode_count(0), None).map_err(store_error)?;
    }
    Ok(())
}

/// Whether a lock holding `held` may be taken at `now_ns`: it is free, or
/// its holder's lease ran out.
pub fn lock_takeable(held: u64, now_ns: u64) -> bool {
    held == 0 || now_ns.saturating_sub(held) >= LOCK_LEASE_NS
}

/// Creates `key` as 0 under the create lock, unless it exists by then.
/// [`BreakerError::Busy`] when another VM keeps the lock through every
/// attempt: nothing was written.
pub fn create(store: &dyn SharedStore, key: &str, now_ns: u64) -> Result<(), BreakerError> {
    let lock_error = |source| BreakerError::Store { key: CREATE_LOCK_KEY.to_owned(), source };
    let key_error = |source| BreakerError::Store { key: key.to_owned(), source };
    // A clock reading of 0 would read as a free lock.
    let stamp = encode_count(now_ns.max(1));
    for _ in 0..LOCK_ATTEMPTS {
        let (raw, cas) = store.get(CREATE_LOCK_KEY).map_err(lock_error)?;
        let Some(cas) = cas else {
            prepare(store)?;
            continue;
        };
        if !lock_takeable(decode_count(raw.as_deref()), now_ns) {
            continue;
        }
        match store.set(CREATE_LOCK_KEY, &stamp, Some(cas)) {
            Ok(()) => {}
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(lock_error(e)),
        }
        // Holding the lock: no other VM writes an absent key now.
        let created = match store.get(key) {
            Ok((_, Some(_))) => Ok(()),
            Ok((_, None)) => store.set(key, &encode_count(0), None).map_err(key_error),
            Err(e) => Err(key_error(e)),
        };
        store.set(CREATE_LOCK_KEY, &encode_count(0), None).map_err(lock_error)?;
        return created;
    }
    Err(BreakerError::Busy { key: key.to_owned() })
}

/// Applies `step` to the count under `key` by compare-and-swap, creating
/// the key first if it is absent. Returns the new count, or `None` when
/// `step` declined (e.g. at capacity: nothing is written).
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    now_ns: u64,
    step: impl Fn(u64) -> Option<u64>,
) -> Result<Option<u64>, BreakerError> {
    let store_error = |source| BreakerError::Store { key: key.to_owned(), source };
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (raw, cas) = store.get(key).map_err(store_error)?;
        let Some(cas) = cas else {
            create(store, key, now_ns)?;
            continue;
        };
        let Some(next) = step(decode_count(raw.as_deref())) else { return Ok(None) };
        match store.set(key, &encode_count(next), Some(cas)) {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(BreakerError::Contended { key: key.to_owned() })
}

/// Takes one slot of the revision's capacity; `Ok(false)` when full.
pub fn try_acquire(
    store: &dyn SharedStore,
    revision: &RevisionKey,
    capacity: u64,
    now_ns: u64,
) -> Result<bool, BreakerError> {
    Ok(update(store, &counter_key(revision), now_ns, |n| admit(n, capacity))?.is_some())
}

/// Gives back one slot.
pub fn give_back(store: &dyn SharedStore, revision: &RevisionKey, now_ns: u64) -> Result<(), BreakerError> {
    update(store, &counter_key(revision), now_ns, release).map(|_| ())
}

/// An in-memory [`SharedStore`] with Envoy's CAS semantics, for tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// What another VM does in between, given the shared store.
    pub type OtherVm = Box<dyn FnOnce(&FakeStore)>;

    #[derive(Default)]
    pub struct FakeStore {
        pub values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        /// Simulates other VMs: this many upcoming `set`s see a CAS mismatch
        /// (and bump the value's token as a concurrent writer would).
        pub mismatches: Cell<usize>,
        pub fail: Cell<bool>,
        /// Simulates another VM acting between this VM's read and its next
        /// write: runs once, just before the next `set`.
        pub before_set: RefCell<Option<OtherVm>>,
    }

    impl std::fmt::Debug for FakeStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeStore").field("values", &self.values).finish_non_exhaustive()
        }
    }

    impl FakeStore {
        pub fn count(&self, revision: &RevisionKey) -> u64 {
            let values = self.values.borrow();
            decode_count(values.get(&counter_key(revision)).map(|(v, _)| v.as_slice()))
        }

        pub fn set_count(&self, revision: &RevisionKey, count: u64) {
            let mut values = self.values.borrow_mut();
            let cas = values.get(&counter_key(revision)).map_or(1, |(_, cas)| cas + 1);
            values.insert(counter_key(revision), (encode_count(count).to_vec(), cas));
        }
    }

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            if self.fail.get() {
                return Err(StoreError::Host("down".into()));
            }
            Ok(match self.values.borrow().get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let other_vm = self.before_set.borrow_mut().take();
            if let Some(other_vm) = other_vm {
                other_vm(self);
            }
            let mut values = self.values.borrow_mut();
            let current = values.get(key).map(|(_, c)| *c);
            if self.mismatches.get() > 0 {
                self.mismatches.set(self.mismatches.get() - 1);
                if let Some((_, c)) = values.get_mut(key) {
                    *c += 1;
                }
                return Err(StoreError::CasMismatch);
            }
            if cas.is_some() && cas != current {
                return Err(StoreError::CasMismatch);
            }
            values.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeStore;
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn lock(store: &FakeStore) -> u64 {
        decode_count(store.values.borrow().get(CREATE_LOCK_KEY).map(|(v, _)| v.as_slice()))
    }

    #[test]
    fn pure_accounting() {
        let cases = [
            // (in flight, capacity, admitted count)
            (0, 1, Some(1)),
            (0, 0, None),
            (9, 10, Some(10)),
            (10, 10, None),
            (11, 10, None),
        ];
        for (in_flight, capacity, want) in cases {
            assert_eq!(admit(in_flight, capacity), want, "admit({in_flight}, {capacity})");
        }
        assert_eq!(release(3), Some(2));
        assert_eq!(release(0), Some(0), "never below zero");
        assert_eq!(decode_count(None), 0);
        assert_eq!(decode_count(Some(b"junk")), 0);
        assert_eq!(decode_count(Some(&encode_count(42))), 42);
    }

    #[test]
    fn acquire_until_full_then_release() {
        let store = FakeStore::default();
        let rev = RevisionKey::new("d", "a");
        assert_eq!(try_acquire(&store, &rev, 2, NOW), Ok(true));
        assert_eq!(try_acquire(&store, &rev, 2, NOW), Ok(true));
        assert_eq!(try_acquire(&store, &rev, 2, NOW), Ok(false));
        assert_eq!(store.count(&rev), 2);
        give_back(&store, &rev, NOW).unwrap();
        assert_eq!(store.count(&rev), 1);
        assert_eq!(try_acquire(&store, &rev, 2, NOW), Ok(true));
    }

    #[test]
    fn another_vm_writing_in_between_is_retried() {
        let store = FakeStore::default();
        let rev = RevisionKey::new("d", "a");
        store.set_count(&rev, 1);
        store.mismatches.set(3);
        assert_eq!(try_acquire(&store, &rev, 5, NOW), Ok(true));
        assert_eq!(store.count(&rev), 2);

        store.mismatches.set(MAX_CAS_ATTEMPTS);
        assert!(matches!(try_acquire(&store, &rev, 5, NOW), Err(BreakerError::Contended { .. })));
        assert_eq!(store.count(&rev), 2, "nothing written when contended");
    }

    #[test]
    fn store_failures_are_errors_not_panics() {
        let store = FakeStore::default();
        store.fail.set(true);
        let rev = RevisionKey::new("d", "a");
        let err = try_acquire(&store, &rev, 1, NOW).unwrap_err();
        assert!(err.to_string().contains("revgate.inflight/d/a"), "{err}");
    }

    #[test]
    fn two_vms_admitting_a_new_revisions_first_requests_count_both() {
        // VM A reads the counter absent; VM B takes the only slot before A
        // writes. A must see B's count, not overwrite it.
        let store = FakeStore::default();
        prepare(&store).unwrap();
        let rev = RevisionKey::new("d", "a");
        *store.before_set.borrow_mut() = Some(Box::new(|store: &FakeStore| {
            let b = try_acquire(store, &RevisionKey::new("d", "a"), 1, NOW);
            assert_eq!(b, Ok(true), "VM B takes the slot");
        }));
        assert_eq!(try_acquire(&store, &rev, 1, NOW), Ok(false), "VM A finds the revision full");
        assert_eq!(store.count(&rev), 1);
        assert_eq!(lock(&store), 0, "the create lock is let go");
    }

    #[test]
    fn a_held_create_lock_defers_and_a_stale_one_is_taken_over() {
        let store = FakeStore::default();
        prepare(&store).unwrap();
        let rev = RevisionKey::new("d", "a");
        store.set(CREATE_LOCK_KEY, &encode_count(NOW - 1_000), None).unwrap();
        assert!(matches!(try_acquire(&store, &rev, 1, NOW), Err(BreakerError::Busy { .. })));
        assert!(!store.values.borrow().contains_key(&counter_key(&rev)), "nothing written while another VM creates");

        let later = NOW - 1_000 + LOCK_LEASE_NS;
        assert_eq!(try_acquire(&store, &rev, 1, later), Ok(true), "the lease ran out");
        assert_eq!(store.count(&rev), 1);
        assert_eq!(lock(&store), 0);
    }

    #[test]
    fn preparing_keeps_a_taken_lock_and_creating_keeps_an_existing_count() {
        let store = FakeStore::default();
        prepare(&store).unwrap();
        store.set(CREATE_LOCK_KEY, &encode_count(NOW), None).unwrap();
        prepare(&store).unwrap();
        assert_eq!(lock(&store), NOW, "a VM starting later does not free another's lock");

        store.set(CREATE_LOCK_KEY, &encode_count(0), None).unwrap();
        let rev = RevisionKey::new("d", "a");
        store.set_count(&rev, 3);
        create(&store, &counter_key(&rev), NOW).unwrap();
        assert_eq!(store.count(&rev), 3);
    }
}
