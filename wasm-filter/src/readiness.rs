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
//!
//! An answer is either a complete view, which replaces the table, or a
//! partial one, which lists only the revisions that changed since the
//! version it names as its base (`partial_after`) and the ones removed:
//!
//! | answer | table held | result |
//! |---|---|---|
//! | complete | any or none | replaced |
//! | partial, base = the table's version | that table | lines inserted, replaced or removed; version moves on |
//! | partial, base ≠ the table's version (or no table) | any or none | not applied ([`WrongBase`]); the filter polls again from its own version (0 without one) |

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use revgate_proto::{ReadinessUpdate, RevisionReadiness};

use crate::revision::{RevisionKey, parse_metadata_name};

/// One revision's line of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub ready_endpoints: u32,
    pub container_concurrency: u32,
    /// The revision's timeoutSeconds in ms; 0: use the filter's default
    /// for the hold, and no response-start limit.
    pub activation_timeout_ms: u64,
    /// responseStartTimeoutSeconds in ms; 0: none (see [`crate::deadline`]).
    pub response_start_timeout_ms: u64,
    /// idleTimeoutSeconds in ms; 0: none.
    pub idle_timeout_ms: u64,
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

/// A partial view: what changed between two versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial {
    /// The version this applies onto.
    pub after: u64,
    /// The version it leads to.
    pub version: u64,
    /// Revisions added or updated, at most once each.
    pub lines: Vec<(RevisionKey, Readiness)>,
    /// Revisions removed.
    pub removed: Vec<RevisionKey>,
}

impl Partial {
    /// Each revision this changes, with its new line (`None`: removed).
    pub fn touched(&self) -> impl Iterator<Item = (&RevisionKey, Option<&Readiness>)> {
        let lines = self.lines.iter().map(|(key, line)| (key, Some(line)));
        lines.chain(self.removed.iter().map(|key| (key, None)))
    }
}

/// A decoded answer: a complete or a partial view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Complete(ReadinessTable),
    Partial(Partial),
}

impl View {
    /// The version the view leads to.
    pub fn version(&self) -> u64 {
        match self {
            Self::Complete(table) => table.version,
            Self::Partial(partial) => partial.version,
        }
    }
}

/// A partial view whose base is not the version held: applying it would
/// mix two views, so it is dropped and the filter asks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "partial readiness update applies onto version {base} but this VM holds {held:?}; asking again from the view held"
)]
pub struct WrongBase {
    pub base: u64,
    pub held: Option<u64>,
}

/// A decoded view and the entries of the update that were unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub view: View,
    /// Entries skipped: a namespace or revision that is not a Kubernetes
    /// name, or a revision listed twice (the first entry wins).
    pub skipped: Vec<String>,
}

/// The key of an entry, or why it is skipped.
fn key_of(namespace: &str, revision: &str) -> Result<RevisionKey, String> {
    let names = parse_metadata_name(namespace.as_bytes()).zip(parse_metadata_name(revision.as_bytes()));
    match names {
        Some((namespace, revision)) => Ok(RevisionKey { namespace, revision }),
        None => Err(format!("invalid name {namespace:?}/{revision:?}")),
    }
}

fn line_of(entry: &RevisionReadiness) -> Readiness {
    Readiness {
        ready_endpoints: entry.ready_endpoints,
        container_concurrency: entry.container_concurrency,
        activation_timeout_ms: entry.activation_timeout_ms,
        response_start_timeout_ms: entry.response_start_timeout_ms,
        idle_timeout_ms: entry.idle_timeout_ms,
    }
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
        for entry in &update.revisions {
            let key = match key_of(&entry.namespace, &entry.revision) {
                Ok(key) => key,
                Err(reason) => {
                    skipped.push(reason);
                    continue;
                }
            };
            if revisions.contains_key(&key) {
                skipped.push(format!("{key} listed more than once"));
                continue;
            }
            revisions.insert(key, line_of(entry));
        }
        if update.partial_after == 0 {
            let table = Self { version: update.version, revisions };
            return Ok(Decoded { view: View::Complete(table), skipped });
        }
        let mut removed = Vec::with_capacity(update.removed.len());
        for name in &update.removed {
            match key_of(&name.namespace, &name.revision) {
                Ok(key) if revisions.contains_key(&key) => skipped.push(format!("{key} both listed and removed")),
                Ok(key) => removed.push(key),
                Err(reason) => skipped.push(reason),
            }
        }
        let mut lines: Vec<(RevisionKey, Readiness)> = revisions.into_iter().collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        let partial = Partial { after: update.partial_after, version: update.version, lines, removed };
        Ok(Decoded { view: View::Partial(partial), skipped })
    }

    /// Applies a partial view onto this table when it is the partial's base.
    pub fn apply(&mut self, partial: &Partial) -> Result<(), WrongBase> {
        if partial.after != self.version {
            return Err(WrongBase { base: partial.after, held: Some(self.version) });
        }
        for (key, line) in &partial.lines {
            self.revisions.insert(key.clone(), *line);
        }
        for key in &partial.removed {
            self.revisions.remove(key);
        }
        self.version = partial.version;
        Ok(())
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

    /// The table of a complete view (tests only).
    #[cfg(test)]
    pub fn complete(decoded: Decoded) -> Self {
        match decoded.view {
            View::Complete(table) => table,
            View::Partial(partial) => panic!("expected a complete view, got {partial:?}"),
        }
    }

    #[cfg(test)]
    pub fn of(version: u64, entries: &[(&str, &str, u32, u32)]) -> Self {
        let revisions = entries
            .iter()
            .map(|&(ns, rev, ready, cc)| {
                let line = Readiness {
                    ready_endpoints: ready,
                    container_concurrency: cc,
                    activation_timeout_ms: 0,
                    response_start_timeout_ms: 0,
                    idle_timeout_ms: 0,
                };
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
        if let Some(change) = change(before, new.and_then(|new| new.get(key))) {
            changes.insert(key.clone(), change);
        }
    }
    changes.into_iter().collect()
}

/// How one revision's line changed (`after` `None`: it left the view).
pub fn change(before: &Readiness, after: Option<&Readiness>) -> Option<Change> {
    match after {
        None => Some(Change::Forgotten),
        Some(after) if !before.is_ready() && after.is_ready() => Some(Change::BecameReady),
        Some(after) if before.is_ready() && grew(before.capacity(None), after.capacity(None)) => {
            Some(Change::CapacityGrew)
        }
        Some(_) => None,
    }
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
        RevisionReadiness { namespace: ns.into(), revision: rev.into(), ready_endpoints: ready, ..Default::default() }
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
            ..Default::default()
        };
        let decoded = ReadinessTable::decode(&update.encode_to_vec()).unwrap();
        assert_eq!(decoded.skipped.len(), 3, "{:?}", decoded.skipped);
        let table = ReadinessTable::complete(decoded);
        assert_eq!(table.version, 3);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(&RevisionKey::new("default", "hello-00001")).unwrap().ready_endpoints, 0);
    }

    #[test]
    fn version_zero_and_garbage_are_errors() {
        let zero = ReadinessUpdate { version: 0, ..Default::default() };
        assert_eq!(ReadinessTable::decode(&zero.encode_to_vec()), Err(ReadinessError::ZeroVersion));
        assert!(matches!(ReadinessTable::decode(b"\xff\xff\xff"), Err(ReadinessError::Decode(_))));
        assert!(ReadinessTable::decode(b"not protobuf at all").is_err());
    }

    #[test]
    fn capacity_and_timeouts() {
        let line = Readiness {
            ready_endpoints: 3,
            container_concurrency: 0,
            activation_timeout_ms: 0,
            response_start_timeout_ms: 0,
            idle_timeout_ms: 0,
        };
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

    fn name(ns: &str, rev: &str) -> revgate_proto::RevisionName {
        revgate_proto::RevisionName { namespace: ns.into(), revision: rev.into() }
    }

    /// Applies one decoded answer onto a table the way the gate does.
    fn answer(held: &ReadinessTable, update: ReadinessUpdate) -> Result<ReadinessTable, WrongBase> {
        match ReadinessTable::from_update(update).unwrap().view {
            View::Complete(table) => Ok(table),
            View::Partial(partial) => {
                let mut table = held.clone();
                table.apply(&partial).map(|()| table)
            }
        }
    }

    #[test]
    fn answers_apply_onto_the_table_they_name() {
        let held = ReadinessTable::of(7, &[("d", "a", 0, 0), ("d", "b", 1, 0), ("d", "c", 2, 0)]);
        struct Case {
            name: &'static str,
            update: ReadinessUpdate,
            want: Result<ReadinessTable, WrongBase>,
        }
        let cases = [
            Case {
                name: "partial on the held version: insert, replace, remove",
                update: ReadinessUpdate {
                    version: 9,
                    partial_after: 7,
                    revisions: vec![entry("d", "a", 2), entry("d", "new", 0)],
                    removed: vec![name("d", "c"), name("d", "never-listed")],
                },
                want: Ok(ReadinessTable::of(9, &[("d", "a", 2, 0), ("d", "b", 1, 0), ("d", "new", 0, 0)])),
            },
            Case {
                name: "partial on another version: not applied",
                update: ReadinessUpdate {
                    version: 9,
                    partial_after: 6,
                    revisions: vec![entry("d", "a", 2)],
                    ..Default::default()
                },
                want: Err(WrongBase { base: 6, held: Some(7) }),
            },
            Case {
                name: "complete: replaces whatever was held",
                update: ReadinessUpdate { version: 3, revisions: vec![entry("d", "z", 1)], ..Default::default() },
                want: Ok(ReadinessTable::of(3, &[("d", "z", 1, 0)])),
            },
            Case {
                name: "partial that changes nothing but the version",
                update: ReadinessUpdate { version: 8, partial_after: 7, ..Default::default() },
                want: Ok(ReadinessTable { version: 8, ..held.clone() }),
            },
        ];
        for case in cases {
            assert_eq!(answer(&held, case.update), case.want, "{}", case.name);
        }
    }

    #[test]
    fn a_partial_skips_unusable_names_and_lines_both_listed_and_removed() {
        let update = ReadinessUpdate {
            version: 9,
            partial_after: 7,
            revisions: vec![entry("d", "a", 1), entry("d", "a", 2)],
            removed: vec![name("d", "a"), name("Bad", "x"), name("d", "b")],
        };
        let decoded = ReadinessTable::from_update(update).unwrap();
        assert_eq!(decoded.skipped.len(), 3, "{:?}", decoded.skipped);
        let View::Partial(partial) = decoded.view else { panic!("expected a partial view") };
        assert_eq!(partial.lines.len(), 1);
        assert_eq!(partial.lines[0].1.ready_endpoints, 1, "the first entry wins");
        assert_eq!(partial.removed, vec![RevisionKey::new("d", "b")]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(decoded) = ReadinessTable::decode(&raw) {
                prop_assert!(decoded.view.version() != 0);
                if let View::Partial(partial) = decoded.view {
                    let mut table = ReadinessTable::of(partial.after, &[("d", "a", 1, 0)]);
                    prop_assert!(table.apply(&partial).is_ok());
                    prop_assert_eq!(table.version, partial.version);
                }
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
                    container_concurrency: cc, activation_timeout_ms: timeout, ..Default::default()
                }).collect(),
                ..Default::default()
            };
            let bytes = update.encode_to_vec();
            if let Ok(decoded) = ReadinessTable::decode(&bytes) {
                let table = ReadinessTable::complete(decoded);
                prop_assert!(diff(Some(&table), Some(&table)).is_empty());
            }
        }
    }
}
