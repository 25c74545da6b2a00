//! The control plane's view of which revisions can take traffic, as the
//! filter keeps it, and what changes between two views.
//!
//! What the filter does with a request for a revision, by the latest view:
//!
//! | view of the revision | request |
//! |---|---|
//! | no view yet (the control plane never answered) | passes |
//! | not listed (unknown to the control plane) | passes |
//! | `ready_endpoints == 0` | held; the first one held in the VM sends an activation |
//! | ready, `release_gate: probe`, its cluster not yet confirmed in this VM | held until a probe through the cluster reaches the revision ([`crate::probe`]) |
//! | ready, `container_concurrency == 0` | passes |
//! | ready, `container_concurrency > 0` | admitted while fewer than `cc × ready` are in flight across the VMs, else queued |

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use revgate_proto::ReadinessUpdate;

use crate::revision::{RevisionKey, parse_metadata_name};

/// One revision's line of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub ready_endpoints: u32,
    pub container_concurrency: u32,
    /// 0: use the filter's default.
    pub activation_timeout_ms: u64,
}

impl Readiness {
    /// The revision can take a request now (subject to its capacity).
    pub fn is_ready(&self) -> bool {
        self.ready_endpoints > 0
    }

    /// The effective containerConcurrency: the view's when non-zero, else the
    /// cluster metadata's, else 0 (unlimited).
    pub fn container_concurrency(&self, metadata: Option<u32>) -> u32 {
        if self.container_concurrency > 0 { self.container_concurrency } else { metadata.unwrap_or(0) }
    }

    /// Requests the revision may have in flight across all VMs
    /// (`cc × ready_endpoints`, Knative's breaker capacity); `None` when
    /// unlimited.
    pub fn capacity(&self, metadata_cc: Option<u32>) -> Option<u64> {
        match self.container_concurrency(metadata_cc) {
            0 => None,
            cc => Some(u64::from(cc).saturating_mul(u64::from(self.ready_endpoints))),
        }
    }

    /// How long a request may be held for this revision.
    pub fn activation_timeout_ms(&self, default_ms: u64) -> u64 {
        if self.activation_timeout_ms > 0 { self.activation_timeout_ms } else { default_ms }
    }
}

/// A complete view, as of one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessTable {
    pub version: u64,
    revisions: HashMap<RevisionKey, Readiness>,
}

/// Why an answer to the readiness poll was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadinessError {
    #[error("readiness update is not a valid revgate.activation.v1.ReadinessUpdate: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(
        "readiness update has version 0, which the contract reserves for \"none\"; is the control plane's activation service current?"
    )]
    ZeroVersion,
}

/// A decoded view and the entries of the update that were unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub table: ReadinessTable,
    /// Entries skipped: a namespace or revision that is not a Kubernetes
    /// name, or a revision listed twice (the first entry wins).
    pub skipped: Vec<String>,
}

impl ReadinessTable {
    /// Decodes the body of a readiness answer.
    pub fn decode(body: &[u8]) -> Result<Decoded, ReadinessError> {
        Self::from_update(ReadinessUpdate::decode(body)?)
    }

    pub fn from_update(update: ReadinessUpdate) -> Result<Decoded, ReadinessError> {
        if update.version == 0 {
            return Err(ReadinessError::ZeroVersion);
        }
        let mut revisions = HashMap::with_capacity(update.revisions.len());
        let mut skipped = Vec::new();
        for entry in update.revisions {
            let names =
                parse_metadata_name(entry.namespace.as_bytes()).zip(parse_metadata_name(entry.revision.as_bytes()));
            let Some((namespace, revision)) = names else {
                skipped.push(format!("invalid name {:?}/{:?}", entry.namespace, entry.revision));
                continue;
            };
            let key = RevisionKey { namespace, revision };
            if revisions.contains_key(&key) {
                skipped.push(format!("{key} listed more than once"));
                continue;
            }
            revisions.insert(
                key,
                Readiness {
                    ready_endpoints: entry.ready_endpoints,
                    container_concurrency: entry.container_concurrency,
                    activation_timeout_ms: entry.activation_timeout_ms,
                },
            );
        }
        Ok(Decoded { table: Self { version: update.version, revisions }, skipped })
    }

    pub fn get(&self, key: &RevisionKey) -> Option<&Readiness> {
        self.revisions.get(key)
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    #[cfg(test)]
    pub fn of(version: u64, entries: &[(&str, &str, u32, u32)]) -> Self {
        let revisions = entries
            .iter()
            .map(|&(ns, rev, ready, cc)| {
                let line = Readiness { ready_endpoints: ready, container_concurrency: cc, activation_timeout_ms: 0 };
                (RevisionKey::new(ns, rev), line)
            })
            .collect();
        Self { version, revisions }
    }
}

/// How a revision's admission changed from one view to the next, for the
/// revisions whose held requests may now move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// From 0 ready endpoints to some: held requests may be released.
    BecameReady,
    /// Still ready, with more capacity (`cc × ready`) than before: queued
    /// requests may be admitted.
    CapacityGrew,
    /// No longer in the view (or the view itself was forgotten): held
    /// requests are released to Envoy, which answers for itself.
    Forgotten,
}

/// The revisions whose held requests may move when the view goes from `old`
/// to `new` (`None`: no view). Sorted by revision for deterministic release.
pub fn diff(old: Option<&ReadinessTable>, new: Option<&ReadinessTable>) -> Vec<(RevisionKey, Change)> {
    let mut changes = BTreeMap::new();
    let Some(old) = old else { return Vec::new() };
    for (key, before) in &old.revisions {
        let change = match new.and_then(|new| new.get(key)) {
            None => Some(Change::Forgotten),
            Some(after) if !before.is_ready() && after.is_ready() => Some(Change::BecameReady),
            Some(after) if before.is_ready() && grew(before.capacity(None), after.capacity(None)) => {
                Some(Change::CapacityGrew)
            }
            Some(_) => None,
        };
        if let Some(change) = change {
            changes.insert(key.clone(), change);
        }
    }
    changes.into_iter().collect()
}

/// Capacity grew; `None` is unlimited.
fn grew(before: Option<u64>, after: Option<u64>) -> bool {
    match (before, after) {
        (Some(_), None) => true,
        (Some(b), Some(a)) => a > b,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use revgate_proto::RevisionReadiness;

    fn entry(ns: &str, rev: &str, ready: u32) -> RevisionReadiness {
        RevisionReadiness {
            namespace: ns.into(),
            revision: rev.into(),
            ready_endpoints: ready,
            container_concurrency: 0,
            activation_timeout_ms: 0,
        }
    }

    #[test]
    fn decodes_and_skips_unusable_entries() {
        let update = ReadinessUpdate {
            version: 3,
            revisions: vec![
                entry("default", "hello-00001", 0),
                entry("default", "hello-00001", 5),
                entry("Bad", "x", 1),
                entry("default", "", 1),
                entry("prod", "api-00002", 2),
            ],
        };
        let decoded = ReadinessTable::decode(&update.encode_to_vec()).unwrap();
        assert_eq!(decoded.table.version, 3);
        assert_eq!(decoded.table.len(), 2);
        assert_eq!(decoded.table.get(&RevisionKey::new("default", "hello-00001")).unwrap().ready_endpoints, 0);
        assert_eq!(decoded.skipped.len(), 3, "{:?}", decoded.skipped);
    }

    #[test]
    fn version_zero_and_garbage_are_errors() {
        let zero = ReadinessUpdate { version: 0, revisions: vec![] };
        assert_eq!(ReadinessTable::decode(&zero.encode_to_vec()), Err(ReadinessError::ZeroVersion));
        assert!(matches!(ReadinessTable::decode(b"\xff\xff\xff"), Err(ReadinessError::Decode(_))));
        assert!(ReadinessTable::decode(b"not protobuf at all").is_err());
    }

    #[test]
    fn capacity_and_timeouts() {
        let line = Readiness { ready_endpoints: 3, container_concurrency: 0, activation_timeout_ms: 0 };
        assert_eq!(line.capacity(None), None);
        assert_eq!(line.capacity(Some(2)), Some(6), "metadata cc applies when the view has none");
        let line = Readiness { container_concurrency: 10, ..line };
        assert_eq!(line.capacity(Some(2)), Some(30), "the view's cc wins");
        assert_eq!(line.activation_timeout_ms(300_000), 300_000);
        let line = Readiness { activation_timeout_ms: 5_000, ..line };
        assert_eq!(line.activation_timeout_ms(300_000), 5_000);
        let cold = Readiness { ready_endpoints: 0, ..line };
        assert_eq!(cold.capacity(None), Some(0));
    }

    #[test]
    fn diff_names_the_revisions_whose_held_requests_may_move() {
        let old = ReadinessTable::of(
            1,
            &[
                ("d", "cold-1", 0, 0),
                ("d", "cold-2", 0, 0),
                ("d", "warm", 1, 2),
                ("d", "gone", 0, 0),
                ("d", "cc", 2, 1),
            ],
        );
        let new = ReadinessTable::of(
            2,
            &[("d", "cold-1", 2, 0), ("d", "cold-2", 0, 0), ("d", "warm", 2, 2), ("d", "cc", 1, 1), ("d", "new", 0, 0)],
        );
        assert_eq!(
            diff(Some(&old), Some(&new)),
            vec![
                (RevisionKey::new("d", "cold-1"), Change::BecameReady),
                (RevisionKey::new("d", "gone"), Change::Forgotten),
                (RevisionKey::new("d", "warm"), Change::CapacityGrew),
            ]
        );
        assert_eq!(diff(None, Some(&new)), vec![], "nothing was held without a view");
        let forgotten = diff(Some(&new), None);
        assert_eq!(forgotten.len(), 5);
        assert!(forgotten.iter().all(|(_, c)| *c == Change::Forgotten));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(decoded) = ReadinessTable::decode(&raw) {
                prop_assert!(decoded.table.version != 0);
            }
        }

        #[test]
        fn arbitrary_updates_decode_without_panic(
            version in any::<u64>(),
            entries in proptest::collection::vec(
                ("[a-zA-Z0-9.\\-]{0,12}", "[a-z0-9\\-]{0,12}", any::<u32>(), any::<u32>(), any::<u64>()),
                0..20,
            ),
        ) {
            let update = ReadinessUpdate {
                version,
                revisions: entries.into_iter().map(|(ns, rev, ready, cc, timeout)| RevisionReadiness {
                    namespace: ns, revision: rev, ready_endpoints: ready,
                    container_concurrency: cc, activation_timeout_ms: timeout,
                }).collect(),
            };
            let bytes = update.encode_to_vec();
            if let Ok(decoded) = ReadinessTable::decode(&bytes) {
                let _ = diff(Some(&decoded.table), Some(&decoded.table));
                prop_assert!(diff(Some(&decoded.table), Some(&decoded.table)).is_empty());
            }
        }
    }
}
