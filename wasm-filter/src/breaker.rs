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
//! Known limits, accepted because a shared-data key can be neither created
//! atomically nor enumerated:
//! - the first write of a key is unconditional, so two VMs admitting the very
//!   first requests of a revision at the same instant may both count from 0
//!   (one request over capacity, once);
//! - a VM that dies with requests in flight leaves them counted. The filter
//!   never panics, so VMs end only by configuration change, and an old VM
//!   still runs `on_log` for its streams and releases their slots.

use crate::revision::RevisionKey;

/// Attempts at one compare-and-swap before giving up. Contention is at most
/// one writer per worker thread, so a handful suffices; giving up fails open
/// (the request is admitted uncounted) rather than holding it forever.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Prefix of the shared-data keys holding in-flight counts.
const KEY_PREFIX: &str = "revgate.inflight/";

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
}

/// Applies `step` to the count under `key` by compare-and-swap. Returns the
/// new count, or `None` when `step` declined (e.g. at capacity: nothing is
/// written).
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    step: impl Fn(u64) -> Option<u64>,
) -> Result<Option<u64>, BreakerError> {
    let store_error = |source| BreakerError::Store { key: key.to_owned(), source };
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (raw, cas) = store.get(key).map_err(store_error)?;
        let Some(next) = step(decode_count(raw.as_deref())) else { return Ok(None) };
        match store.set(key, &encode_count(next), cas) {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(BreakerError::Contended { key: key.to_owned() })
}

/// Takes one slot of the revision's capacity; `Ok(false)` when full.
pub fn try_acquire(store: &dyn SharedStore, revision: &RevisionKey, capacity: u64) -> Result<bool, BreakerError> {
    Ok(update(store, &counter_key(revision), |n| admit(n, capacity))?.is_some())
}

/// Gives back one slot.
pub fn give_back(store: &dyn SharedStore, revision: &RevisionKey) -> Result<(), BreakerError> {
    update(store, &counter_key(revision), release).map(|_| ())
}

/// An in-memory [`SharedStore`] with Envoy's CAS semantics, for tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    pub struct FakeStore {
        pub values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        /// Simulates other VMs: this many upcoming `set`s see a CAS mismatch
        /// (and bump the value's token as a concurrent writer would).
        pub mismatches: Cell<usize>,
        pub fail: Cell<bool>,
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
        assert_eq!(try_acquire(&store, &rev, 2), Ok(true));
        assert_eq!(try_acquire(&store, &rev, 2), Ok(true));
        assert_eq!(try_acquire(&store, &rev, 2), Ok(false));
        assert_eq!(store.count(&rev), 2);
        give_back(&store, &rev).unwrap();
        assert_eq!(store.count(&rev), 1);
        assert_eq!(try_acquire(&store, &rev, 2), Ok(true));
    }

    #[test]
    fn another_vm_writing_in_between_is_retried() {
        let store = FakeStore::default();
        let rev = RevisionKey::new("d", "a");
        store.set_count(&rev, 1);
        store.mismatches.set(3);
        assert_eq!(try_acquire(&store, &rev, 5), Ok(true));
        assert_eq!(store.count(&rev), 2);

        store.mismatches.set(MAX_CAS_ATTEMPTS);
        assert!(matches!(try_acquire(&store, &rev, 5), Err(BreakerError::Contended { .. })));
        assert_eq!(store.count(&rev), 2, "nothing written when contended");
    }

    #[test]
    fn store_failures_are_errors_not_panics() {
        let store = FakeStore::default();
        store.fail.set(true);
        let rev = RevisionKey::new("d", "a");
        let err = try_acquire(&store, &rev, 1).unwrap_err();
        assert!(err.to_string().contains("revgate.inflight/d/a"), "{err}");
    }
}
