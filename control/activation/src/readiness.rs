//! Which revisions each gateway can send traffic to — the basis of the
//! filter's decision to hold or release a request.
//!
//! A revision counts as ready *in a given Envoy* only once that Envoy has
//! ACKed an EDS version containing its endpoints, so a request released on
//! that news never meets "no healthy upstream". Pure: fed with the gateway
//! plan and the xDS ACK events, asked for the update to send to one node.
//!
//! | revision's endpoints          | ready endpoints reported to node N           |
//! |-------------------------------|----------------------------------------------|
//! | IP addresses (EDS)            | endpoints in the assignment N last ACKed      |
//! | IP addresses, N's filter probes (`gate=probe`) | the registered endpoints: N is not programmed by revgate (an Istio gateway) and never ACKs; its filter confirms them in its own Envoy before releasing |
//! | host names (inlined, no EDS)  | the static endpoints (DNS resolves in Envoy) |
//! | none yet                      | 0: the filter holds requests                 |
//!
//! Each count is also capped by what the control plane *wants* the revision
//! to have ([`ReadinessTable::set_desired`]): when a revision goes to zero,
//! the filters hear "cold" before Envoy loses the endpoints, so no request
//! slips through to an empty cluster.
//!
//! Every version also records which revisions it touched, for the last
//! [`CHANGE_LOG_VERSIONS`] versions: a filter polling from a version still
//! in that log gets a partial update ([`ReadinessTable::update_after`]) with
//! only the revisions that changed since, so an endpoint appearing among
//! 10,000 Services costs one entry to build, send and apply, not 20,000.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost::{Message, Name};
use revgate_model::plan::{GatewayPlan, ObjectKey, RevisionBackend};
use revgate_proto::{ReadinessUpdate, RevisionName, RevisionReadiness};
use revgate_xds::AckEvent;
use revgate_xds::names::parse_revision_cluster;

/// What the filter needs to know about a revision besides its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RevisionFacts {
    container_concurrency: u32,
    activation_timeout_ms: u64,
    response_start_timeout_ms: u64,
    idle_timeout_ms: u64,
    /// Endpoints inlined by host name, ready without an EDS ACK.
    inlined_endpoints: Option<u32>,
}

/// How many versions the change log remembers. A filter further behind
/// gets a complete view; the log's entries are shared with every snapshot
/// (`Arc`), so a longer log costs memory, not time per change.
pub const CHANGE_LOG_VERSIONS: usize = 256;

/// Revisions, and per node the endpoint counts it ACKed.
#[derive(Debug, Clone)]
pub struct ReadinessTable {
    /// Bumped on every change; the filter long-polls on it. Never 0, so a
    /// filter with nothing gets an answer at once, and it starts where no
    /// earlier run of the control plane reached (see [`ReadinessTable::new`]).
    version: u64,
    /// Shared with every snapshot until the plan changes: publishing a
    /// snapshot per ACK must not copy every revision.
    revisions: Arc<BTreeMap<ObjectKey, RevisionFacts>>,
    /// The plan's revisions `revisions` was read from. A plan that shares
    /// every one of them (a route change) changes nothing here, and telling
    /// so costs a pointer comparison per revision.
    backends: Arc<[Arc<RevisionBackend>]>,
    /// Per node, the revisions with a non-zero ACKed endpoint count (absent
    /// is 0), so a node's map holds the warm revisions, not the world, and
    /// the copy an ACK makes of it costs what is warm.
    acked: BTreeMap<String, Arc<BTreeMap<ObjectKey, u32>>>,
    /// Endpoints the control plane wants per revision; absent means no cap.
    /// The map its owner published, shared rather than copied.
    desired: Arc<BTreeMap<ObjectKey, u32>>,
    /// The revisions each recent version touched, oldest first: entry `i`
    /// holds the keys that changed going to version `version - len + 1 + i`.
    /// A key of any node's ACK counts for every node: a node told about an
    /// entry that did not change for it just gets the same line again.
    changes: ChangeLog,
}

/// The revisions each of the last [`CHANGE_LOG_VERSIONS`] versions touched.
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    entries: VecDeque<Arc<[ObjectKey]>>,
}

impl ChangeLog {
    /// Records the keys that changed going to the next version.
    fn push(&mut self, keys: Vec<ObjectKey>) {
        if self.entries.len() == CHANGE_LOG_VERSIONS {
            self.entries.pop_front();
        }
        self.entries.push_back(keys.into());
    }

    /// The keys changed between `after` and `current`, or `None` when the
    /// log does not reach back to `after` (too old, unknown, from another
    /// run of the control plane, or 0).
    pub fn since(&self, after: u64, current: u64) -> Option<BTreeSet<&ObjectKey>> {
        let behind = usize::try_from(current.checked_sub(after)?).ok()?;
        if after == 0 || behind == 0 || behind > self.entries.len() {
            return None;
        }
        let first = self.entries.len() - behind;
        Some(self.entries.range(first..).flat_map(|keys| keys.iter()).collect())
    }
}

impl Default for ReadinessTable {
    fn default() -> Self {
        Self::new(1)
    }
}

impl ReadinessTable {
    /// A table whose versions start at `first`. After a restart, filters
    /// still hold a version from the previous run: starting from the start
    /// time in milliseconds keeps the new versions from colliding with it,
    /// so no filter mistakes its old view for the current one.
    pub fn new(first: u64) -> Self {
        Self {
            version: first.max(1),
            revisions: Arc::default(),
            backends: Arc::new([]),
            acked: BTreeMap::new(),
            desired: Arc::default(),
            changes: ChangeLog::default(),
        }
    }

    /// Moves to the next version, which changed `keys`.
    fn bump(&mut self, keys: Vec<ObjectKey>) {
        self.version += 1;
        self.changes.push(keys);
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Takes the revisions of a new plan; returns whether anything changed.
    pub fn set_plan(&mut self, plan: &GatewayPlan) -> bool {
        let same = |a: &[Arc<RevisionBackend>], b: &[Arc<RevisionBackend>]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
        };
        if same(&self.backends, &plan.revisions) {
            return false;
        }
        self.backends = plan.revisions.iter().cloned().collect();
        let revisions: BTreeMap<ObjectKey, RevisionFacts> = plan
            .revisions
            .iter()
            .map(|revision| {
                let inlined = revision
                    .static_endpoints
                    .as_ref()
                    .filter(|endpoints| endpoints.iter().any(|e| e.host.parse::<IpAddr>().is_err()))
                    .map(|endpoints| u32::try_from(endpoints.len()).unwrap_or(u32::MAX));
                let facts = RevisionFacts {
                    container_concurrency: revision.container_concurrency,
                    activation_timeout_ms: revision.timeout_seconds.saturating_mul(1000),
                    response_start_timeout_ms: revision.response_start_timeout_seconds.saturating_mul(1000),
                    idle_timeout_ms: revision.idle_timeout_seconds.saturating_mul(1000),
                    inlined_endpoints: inlined,
                };
                (revision.key.clone(), facts)
            })
            .collect();
        if revisions == *self.revisions {
            return false;
        }
        let changed = changed_keys(&self.revisions, &revisions);
        // Endpoint counts of revisions that left the plan go with them: a
        // state-of-the-world ACK never says a cluster was removed.
        for counts in self.acked.values_mut() {
            if counts.keys().any(|key| !revisions.contains_key(key)) {
                Arc::make_mut(counts).retain(|key, _| revisions.contains_key(key));
            }
        }
        self.revisions = Arc::new(revisions);
        self.bump(changed);
        true
    }

    /// Takes the endpoint counts the control plane wants; returns whether
    /// anything changed.
    pub fn set_desired(&mut self, desired: &Arc<BTreeMap<ObjectKey, u32>>) -> bool {
        if Arc::ptr_eq(desired, &self.desired) || **desired == *self.desired {
            return false;
        }
        let changed = changed_keys(&self.desired, desired);
        self.desired = Arc::clone(desired);
        self.bump(changed);
        true
    }

    /// The endpoint count wanted for `revision`, as this table knows it.
    pub fn desired(&self, revision: &ObjectKey) -> Option<u32> {
        self.desired.get(revision).copied()
    }

    /// Takes an ACK; returns whether any node's endpoint counts changed.
    pub fn record_ack(&mut self, ack: &AckEvent) -> bool {
        if ack.type_url != ClusterLoadAssignment::type_url() {
            return false;
        }
        let node = Arc::make_mut(self.acked.entry(ack.node.clone()).or_default());
        let mut changed = Vec::new();
        for resource in &ack.resources {
            let Some(revision) = parse_revision_cluster(&resource.name) else { continue };
            let Ok(assignment) = ClusterLoadAssignment::decode(resource.resource.value.as_slice()) else {
                continue;
            };
            let count: usize = assignment.endpoints.iter().map(|locality| locality.lb_endpoints.len()).sum();
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let before = if count == 0 { node.remove(&revision) } else { node.insert(revision.clone(), count) };
            if before.unwrap_or(0) != count {
                changed.push(revision);
            }
        }
        for name in &ack.removed {
            if let Some(revision) = parse_revision_cluster(name)
                && node.remove(&revision).is_some()
            {
                changed.push(revision);
            }
        }
        if node.is_empty() {
            // A node with nothing warm keeps no map (and no clone of one).
            self.acked.remove(&ack.node);
        }
        if changed.is_empty() {
            return false;
        }
        self.bump(changed);
        true
    }

    /// Whether `revision` is in the plan this table follows.
    pub fn knows(&self, revision: &ObjectKey) -> bool {
        self.revisions.contains_key(revision)
    }

    /// Whether some gateway node can send `revision` traffic: it ACKed
    /// endpoints for it (or they are inlined) and the control plane wants
    /// some. The end of a cold start.
    pub fn ready_anywhere(&self, revision: &ObjectKey) -> bool {
        let Some(facts) = self.revisions.get(revision) else { return false };
        let wanted = self.desired(revision).unwrap_or(u32::MAX);
        let acked = facts
            .inlined_endpoints
            .unwrap_or_else(|| self.acked.values().filter_map(|node| node.get(revision)).copied().max().unwrap_or(0));
        acked.min(wanted) > 0
    }

    /// The revisions that need nothing of the gateway filter in any of
    /// `nodes`: wanted warm, without `containerConcurrency` or
    /// `idleTimeoutSeconds` (the filter's to enforce), and with
    /// endpoints every node in `nodes` ACKed (or inlined). Empty when
    /// `nodes` is: with no gateway to ask, nothing is known to be warm.
    pub fn warm_in_every(&self, nodes: &BTreeSet<String>) -> BTreeSet<ObjectKey> {
        if nodes.is_empty() {
            return BTreeSet::new();
        }
        let needs_no_filter = |key: &ObjectKey, facts: &RevisionFacts| {
            facts.container_concurrency == 0
                && facts.idle_timeout_ms == 0
                && self.desired(key).is_some_and(|wanted| wanted > 0)
        };
        // Inlined endpoints need no ACK.
        let mut warm: BTreeSet<ObjectKey> = self
            .revisions
            .iter()
            .filter(|(key, facts)| facts.inlined_endpoints.is_some_and(|n| n > 0) && needs_no_filter(key, facts))
            .map(|(key, _)| key.clone())
            .collect();
        // The rest must be ACKed with endpoints by every node: the candidates
        // are the warm revisions of one node, not every revision.
        let acked: Option<Vec<&BTreeMap<ObjectKey, u32>>> =
            nodes.iter().map(|node| self.acked.get(node).map(|a| &**a)).collect();
        let Some(acked) = acked else { return warm };
        let Some(fewest) = acked.iter().min_by_key(|a| a.len()) else { return warm };
        warm.extend(
            fewest
                .keys()
                .filter(|key| self.revisions.get(*key).is_some_and(|facts| needs_no_filter(key, facts)))
                .filter(|key| acked.iter().all(|node| node.get(*key).is_some_and(|n| *n > 0)))
                .cloned(),
        );
        warm
    }

    /// The update for one node: every known revision with the endpoints that
    /// node runs. A node whose filter `probes` (it confirms endpoints in its
    /// own Envoy before releasing) gets the registered endpoints instead: it
    /// is one revgate does not program, whose ACKs never come.
    pub fn update_for(&self, node: &str, probes: bool) -> ReadinessUpdate {
        let acked = self.acked.get(node).map(|a| &**a);
        let revisions = self.revisions.iter().map(|(key, facts)| self.line(key, facts, acked, probes)).collect();
        ReadinessUpdate { version: self.version, revisions, ..Default::default() }
    }

    /// The update for a node that holds version `after`: only what changed
    /// since, when `partial` (the filter applies partial views) and the
    /// change log reaches back to `after`; else the complete view.
    pub fn update_after(&self, node: &str, probes: bool, after: u64, partial: bool) -> ReadinessUpdate {
        let Some(keys) = self.changes.since(after, self.version).filter(|_| partial) else {
            return self.update_for(node, probes);
        };
        let acked = self.acked.get(node).map(|a| &**a);
        let mut update = ReadinessUpdate { version: self.version, partial_after: after, ..Default::default() };
        for key in keys {
            match self.revisions.get(key) {
                Some(facts) => update.revisions.push(self.line(key, facts, acked, probes)),
                None => {
                    update.removed.push(RevisionName { namespace: key.namespace.clone(), revision: key.name.clone() })
                }
            }
        }
        update
    }

    /// One revision's line for a node.
    fn line(
        &self,
        key: &ObjectKey,
        facts: &RevisionFacts,
        acked: Option<&BTreeMap<ObjectKey, u32>>,
        probes: bool,
    ) -> RevisionReadiness {
        let desired = self.desired(key);
        let endpoints = facts.inlined_endpoints.unwrap_or_else(|| {
            if probes { desired.unwrap_or(0) } else { acked.and_then(|a| a.get(key)).copied().unwrap_or(0) }
        });
        RevisionReadiness {
            namespace: key.namespace.clone(),
            revision: key.name.clone(),
            ready_endpoints: endpoints.min(desired.unwrap_or(u32::MAX)),
            container_concurrency: facts.container_concurrency,
            activation_timeout_ms: facts.activation_timeout_ms,
            response_start_timeout_ms: facts.response_start_timeout_ms,
            idle_timeout_ms: facts.idle_timeout_ms,
        }
    }
}

/// The keys whose value differs between two maps, including those only in
/// one of them: a merge of two sorted walks.
fn changed_keys<V: PartialEq>(old: &BTreeMap<ObjectKey, V>, new: &BTreeMap<ObjectKey, V>) -> Vec<ObjectKey> {
    let mut changed = Vec::new();
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return changed,
            (Some((key, _)), None) => {
                changed.push((*key).clone());
                old.next();
            }
            (None, Some((key, _))) => {
                changed.push((*key).clone());
                new.next();
            }
            (Some((old_key, old_value)), Some((new_key, new_value))) => match old_key.cmp(new_key) {
                std::cmp::Ordering::Less => {
                    changed.push((*old_key).clone());
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    changed.push((*new_key).clone());
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if old_value != new_value {
                        changed.push((*old_key).clone());
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
    use revgate_model::plan::{Endpoint, RevisionBackend, UpstreamProtocol};
    use revgate_xds::AckedResource;
    use revgate_xds::names::revision_cluster;
    use revgate_xds::translate::to_any;

    use super::*;

    fn revision(name: &str, static_endpoints: Option<Vec<Endpoint>>) -> RevisionBackend {
        RevisionBackend {
            key: ObjectKey::new("default", name),
            configuration: "hello".into(),
            service: Some("hello".into()),
            protocol: UpstreamProtocol::Http1,
            container_concurrency: 10,
            timeout_seconds: 300,
            response_start_timeout_seconds: 120,
            idle_timeout_seconds: 0,
            static_endpoints,
        }
    }

    fn plan(revisions: Vec<RevisionBackend>) -> GatewayPlan {
        GatewayPlan { revisions: revisions.into_iter().map(std::sync::Arc::new).collect(), ..Default::default() }
    }

    fn eds_ack(node: &str, revision: &str, endpoints: usize) -> AckEvent {
        let key = ObjectKey::new("default", revision);
        let assignment = ClusterLoadAssignment {
            cluster_name: revision_cluster(&key),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint::default(); endpoints],
                ..Default::default()
            }],
            ..Default::default()
        };
        AckEvent {
            node: node.into(),
            type_url: ClusterLoadAssignment::type_url(),
            version: "v".into(),
            resources: vec![AckedResource {
                name: revision_cluster(&key),
                version: "r".into(),
                resource: to_any(&assignment),
            }],
            removed: Vec::new(),
        }
    }

    fn ready(table: &ReadinessTable, node: &str, revision: &str) -> u32 {
        let update = table.update_for(node, false);
        update.revisions.iter().find(|r| r.revision == revision).map(|r| r.ready_endpoints).unwrap_or(u32::MAX)
    }

    #[test]
    fn a_revision_is_ready_in_a_node_only_after_that_node_acked_its_endpoints() {
        let mut table = ReadinessTable::default();
        assert!(table.set_plan(&plan(vec![revision("hello-00001", None)])));
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 0, "no ACK yet: hold");

        let before = table.version();
        assert!(table.record_ack(&eds_ack("gw-1", "hello-00001", 2)));
        assert!(table.version() > before);
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 2);
        assert_eq!(ready(&table, "gw-2", "hello-00001"), 0, "another Envoy has not ACKed yet");

        let key = ObjectKey::new("default", "hello-00001");
        assert!(table.ready_anywhere(&key) && table.knows(&key), "a cold start ends at the first node's ACK");
        assert!(!table.ready_anywhere(&ObjectKey::new("default", "made-up")));
        assert!(!table.record_ack(&eds_ack("gw-1", "hello-00001", 2)), "the same ACK changes nothing");
        assert!(table.record_ack(&eds_ack("gw-1", "hello-00001", 0)), "scaled to zero");
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 0);
        assert!(!table.ready_anywhere(&key));
    }

    #[test]
    fn a_node_whose_filter_probes_gets_the_registered_endpoints() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("hello-00001", None)]));
        let key = ObjectKey::new("default", "hello-00001");
        let probed = |table: &ReadinessTable| table.update_for("istio-gw", true).revisions[0].ready_endpoints;
        assert_eq!(probed(&table), 0, "nothing registered");
        table.set_desired(&desired([(key.clone(), 2)]));
        assert_eq!(probed(&table), 2, "registered, no ACK needed: the filter probes");
        assert_eq!(ready(&table, "istio-gw", "hello-00001"), 0, "a filter that does not probe waits for an ACK");
        table.set_desired(&desired([(key, 0)]));
        assert_eq!(probed(&table), 0, "going to zero: cold at once");
    }

    #[test]
    fn endpoints_inlined_by_name_are_ready_without_eds() {
        let mut table = ReadinessTable::default();
        let by_name = vec![Endpoint { host: "localhost".into(), port: 8080 }];
        table.set_plan(&plan(vec![revision("hello-00001", Some(by_name))]));
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 1);
    }

    #[test]
    fn the_update_carries_concurrency_and_timeout_and_unknown_revisions_are_absent() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("hello-00001", None)]));
        let update = table.update_for("gw-1", false);
        assert_eq!(update.revisions.len(), 1);
        assert_eq!(update.revisions[0].container_concurrency, 10);
        assert_eq!(update.revisions[0].activation_timeout_ms, 300_000);
        assert_eq!(update.revisions[0].response_start_timeout_ms, 120_000, "the filter enforces it in every mode");
        assert!(!table.set_plan(&plan(vec![revision("hello-00001", None)])), "same plan, same version");
    }

    #[test]
    fn a_revision_going_to_zero_is_cold_before_envoy_loses_its_endpoints() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("hello-00001", None)]));
        table.record_ack(&eds_ack("gw-1", "hello-00001", 1));
        table.set_desired(&desired([(ObjectKey::new("default", "hello-00001"), 1)]));
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 1);
        assert!(table.set_desired(&desired([(ObjectKey::new("default", "hello-00001"), 0)])));
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 0, "Envoy still has the endpoint, the filter holds");
    }

    #[test]
    fn a_deleted_revision_leaves_nothing_behind() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("hello-00001", None), revision("gone-00001", None)]));
        table.record_ack(&eds_ack("gw-1", "gone-00001", 1));
        assert!(table.set_plan(&plan(vec![revision("hello-00001", None)])));
        assert_eq!(table.acked.get("gw-1").map(|a| a.len()).unwrap_or(0), 0, "its ACKed endpoint count is forgotten");
        table.set_plan(&plan(vec![revision("hello-00001", None), revision("gone-00001", None)]));
        assert_eq!(ready(&table, "gw-1", "gone-00001"), 0, "created again, it waits for a new ACK");
    }

    #[test]
    fn delta_removals_forget_endpoints() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("hello-00001", None)]));
        table.record_ack(&eds_ack("gw-1", "hello-00001", 1));
        let removal = AckEvent {
            resources: Vec::new(),
            removed: vec![revision_cluster(&ObjectKey::new("default", "hello-00001"))],
            ..eds_ack("gw-1", "hello-00001", 0)
        };
        assert!(table.record_ack(&removal));
        assert_eq!(ready(&table, "gw-1", "hello-00001"), 0);
    }

    fn desired<const N: usize>(entries: [(ObjectKey, u32); N]) -> Arc<BTreeMap<ObjectKey, u32>> {
        Arc::new(BTreeMap::from(entries))
    }

    fn names(update: &ReadinessUpdate) -> (Vec<(&str, u32)>, Vec<&str>) {
        let lines = update.revisions.iter().map(|r| (r.revision.as_str(), r.ready_endpoints)).collect();
        let removed = update.removed.iter().map(|r| r.revision.as_str()).collect();
        (lines, removed)
    }

    /// What a poll from each version gets, after a history of changes.
    #[test]
    fn a_poll_from_a_remembered_version_gets_only_what_changed_since() {
        let mut table = ReadinessTable::new(100);
        table.set_plan(&plan(vec![revision("a", None), revision("b", None), revision("c", None)]));
        let v1 = table.version();
        table.record_ack(&eds_ack("gw-1", "a", 1));
        let v2 = table.version();
        table.record_ack(&eds_ack("gw-2", "b", 2));
        let v3 = table.version();
        table.set_plan(&plan(vec![revision("a", None), revision("b", None)]));
        let v4 = table.version();
        assert_eq!(v4, v1 + 3, "one version per change");

        struct Case {
            name: &'static str,
            after: u64,
            partial: bool,
            want_partial_after: u64,
            want_lines: Vec<(&'static str, u32)>,
            want_removed: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "one version behind: only the removal",
                after: v3,
                partial: true,
                want_partial_after: v3,
                want_lines: vec![],
                want_removed: vec!["c"],
            },
            Case {
                name: "another node's ACK is sent too, with this node's count",
                after: v2,
                partial: true,
                want_partial_after: v2,
                want_lines: vec![("b", 0)],
                want_removed: vec!["c"],
            },
            Case {
                name: "this node's ACK",
                after: v1,
                partial: true,
                want_partial_after: v1,
                want_lines: vec![("a", 1), ("b", 0)],
                want_removed: vec!["c"],
            },
            Case {
                name: "from the first version: a revision added and removed since is named as removed",
                after: v1 - 1,
                partial: true,
                want_partial_after: v1 - 1,
                want_lines: vec![("a", 1), ("b", 0)],
                want_removed: vec!["c"],
            },
            Case {
                name: "0: complete",
                after: 0,
                partial: true,
                want_partial_after: 0,
                want_lines: vec![("a", 1), ("b", 0)],
                want_removed: vec![],
            },
            Case {
                name: "from another run (ahead of this one): complete",
                after: v4 + 7,
                partial: true,
                want_partial_after: 0,
                want_lines: vec![("a", 1), ("b", 0)],
                want_removed: vec![],
            },
            Case {
                name: "a filter that does not apply partial views: complete",
                after: v3,
                partial: false,
                want_partial_after: 0,
                want_lines: vec![("a", 1), ("b", 0)],
                want_removed: vec![],
            },
        ];
        for case in cases {
            let update = table.update_after("gw-1", false, case.after, case.partial);
            assert_eq!(update.version, v4, "{}", case.name);
            assert_eq!(update.partial_after, case.want_partial_after, "{}", case.name);
            assert_eq!(names(&update), (case.want_lines, case.want_removed), "{}", case.name);
        }
    }

    #[test]
    fn the_change_log_forgets_the_oldest_versions() {
        let mut table = ReadinessTable::new(1);
        table.set_plan(&plan(vec![revision("a", None)]));
        let first = table.version();
        for i in 0..CHANGE_LOG_VERSIONS {
            assert!(table.record_ack(&eds_ack("gw-1", "a", 1 - i % 2)), "each ACK flips the count");
        }
        let oldest = table.version() - CHANGE_LOG_VERSIONS as u64;
        assert_eq!(oldest, first, "the log reaches back exactly {CHANGE_LOG_VERSIONS} versions");
        assert_eq!(table.update_after("gw-1", false, oldest, true).partial_after, oldest, "the oldest remembered");
        assert_eq!(table.update_after("gw-1", false, oldest - 1, true).partial_after, 0, "one older: complete");
        assert_eq!(table.changes.entries.len(), CHANGE_LOG_VERSIONS);
    }

    #[test]
    fn desired_changes_name_only_the_revisions_whose_cap_moved() {
        let mut table = ReadinessTable::default();
        table.set_plan(&plan(vec![revision("a", None), revision("b", None)]));
        table.set_desired(&desired([(ObjectKey::new("default", "a"), 1)]));
        let before = table.version();
        table.set_desired(&desired([(ObjectKey::new("default", "a"), 1), (ObjectKey::new("default", "b"), 0)]));
        let update = table.update_after("gw-1", true, before, true);
        assert_eq!(names(&update), (vec![("b", 0)], vec![]));
    }
}
