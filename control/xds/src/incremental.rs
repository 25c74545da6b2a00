//! Incremental translation: the next snapshot costs what changed.
//!
//! A [`Translator`] keeps, per input object, a fingerprint of the input it
//! last translated and the names of the resources that came out of it:
//!
//! | input                                   | resources                                  |
//! |-----------------------------------------|--------------------------------------------|
//! | a revision and its endpoints            | its cluster and load assignment (CDS, EDS) |
//! | a Route, the hosts it owns, its         | its virtual hosts, in its shard's route    |
//! | revisions' timeouts, tag-header routing | configuration (RDS), one scope per host    |
//! |                                         | (SRDS)                                     |
//! | the settings and the longest timeout    | the listener (LDS), the control cluster    |
//!
//! [`Translator::update`] compares each object of the new plan with what it
//! had (its fingerprint, no encoding; objects are paired by position, since
//! plans keep their order, and by key when that fails),
//! translates and encodes only the objects that differ, and applies those
//! resources to the previous snapshot ([`crate::snapshot::SnapshotBuilder`]):
//! types nothing touched stay shared, so an endpoint change is an EDS-only
//! change and a split change is one RDS resource (its shard, rebuilt from
//! the virtual hosts kept per Route: see [`crate::names::ROUTE_SHARDS`]). It checks consistency
//! incrementally too: what the changed resources load exists, and nothing
//! left loads what was removed (a count of references per name). The
//! translation itself is the pure [`crate::translate`](mod@crate::translate); equal inputs give
//! the resources `translate` gives.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use revgate_model::plan::{
    Endpoint, EndpointMap, GatewayPlan, MappedHost, ObjectKey, RevisionBackend, RoutePlan, Split, TagPlan,
    UpstreamProtocol,
};
use revgate_model::replaced::ordered_lookup;

use crate::snapshot::{
    ResourceType, Snapshot, SnapshotBuilder, SnapshotError, Upserted, VersionedResource, listener_resource,
    scope_resource,
};
use crate::translate::{
    XdsSettings, claim_hosts, effective_stream_idle_timeout, http_listener, response_start_deadline,
    revision_resources, route_resources, route_timeouts, shard_configuration,
};

/// Translates successive plans into successive snapshots, each change
/// costing what it changes. Owned by the one task that publishes snapshots.
#[derive(Debug)]
pub struct Translator {
    settings: XdsSettings,
    /// A virtual host appended to every route configuration while set:
    /// fault injection (a gateway that rejects routes).
    route_fault: Option<VirtualHost>,
    /// The revisions served without the gateway filter (see [`crate::warm`]).
    bypass: Arc<BTreeSet<ObjectKey>>,
    /// The revisions whose membership of `bypass` changed since the last
    /// update: the Routes sending to them are translated again.
    rebypassed: HashSet<ObjectKey>,
    snapshot: Arc<Snapshot>,
    /// In the order of the last plan.
    revisions: Vec<RevisionEntry>,
    routes: Vec<RouteEntry>,
    /// Per shard, the virtual hosts of each Route in it (those owning a
    /// host): a change rebuilds its shard from these without translating
    /// the shard's other Routes.
    shards: HashMap<u32, BTreeMap<ObjectKey, Vec<VirtualHost>>>,
    /// Every revision's timeout (seconds), for the routes that send to it.
    timeouts: HashMap<ObjectKey, u64>,
    /// The listener's input: the effective idle timeout.
    listener: Option<Duration>,
    control_cluster: bool,
    /// How many resources of the snapshot load each `(type, name)`.
    referrers: HashMap<(ResourceType, String), u32>,
}

/// What a revision was translated from: its key, a fingerprint of the rest
/// of its input, and what the translation produced.
#[derive(Debug)]
struct RevisionEntry {
    key: ObjectKey,
    /// The plan entry it was translated from: the next plan shares it (the
    /// same allocation) while the revision is unchanged, which spares
    /// fingerprinting it again.
    source: Arc<RevisionBackend>,
    /// [`endpoints_fingerprint`] of its live endpoints.
    live: u64,
    /// [`revision_fingerprint`] of the revision and its endpoints.
    fingerprint: u64,
    /// Its [`response_start_deadline`], which its routes carry.
    timeout_seconds: u64,
    /// Whether the revision has an EDS assignment (not a DNS cluster).
    eds: bool,
}

#[derive(Debug)]
struct RouteEntry {
    key: ObjectKey,
    /// The plan entry it was translated from (see [`RevisionEntry::source`]).
    source: Arc<RoutePlan>,
    input: RouteInput,
    /// Scope names, when the Route owns at least one host.
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
struct RouteInput {
    /// [`route_fingerprint`] of the Route's plan.
    fingerprint: u64,
    owned: Vec<bool>,
    tag_header_routing: bool,
    timeouts: Vec<u64>,
    fault: bool,
    /// Served without the gateway filter.
    filter_off: bool,
}

impl Translator {
    pub fn new(settings: XdsSettings) -> Self {
        Self {
            settings,
            route_fault: None,
            bypass: Arc::new(BTreeSet::new()),
            rebypassed: HashSet::new(),
            snapshot: Arc::new(Snapshot::empty()),
            revisions: Vec::new(),
            routes: Vec::new(),
            shards: HashMap::new(),
            timeouts: HashMap::new(),
            listener: None,
            control_cluster: false,
            referrers: HashMap::new(),
        }
    }

    /// Sets (or clears) a virtual host appended to every route
    /// configuration while set (the next update retranslates them all).
    pub fn set_route_fault(&mut self, fault: Option<VirtualHost>) {
        self.route_fault = fault;
    }

    /// The latest snapshot.
    /// Sets the revisions served without the gateway filter (the next
    /// update translates again the Routes of those that joined or left);
    /// returns whether it changed.
    pub fn set_bypass(&mut self, bypass: Arc<BTreeSet<ObjectKey>>) -> bool {
        if Arc::ptr_eq(&bypass, &self.bypass) || bypass == self.bypass {
            return false;
        }
        self.rebypassed.extend(self.bypass.symmetric_difference(&bypass).cloned());
        self.bypass = bypass;
        true
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Translates what changed since the last update and returns the next
    /// snapshot (the same `Arc` when nothing changed), or why it would leave
    /// Envoy with a dangling reference. After an error the translator
    /// starts afresh: the next update translates everything.
    pub fn update(&mut self, plan: &GatewayPlan, endpoints: &EndpointMap) -> Result<Arc<Snapshot>, SnapshotError> {
        let result = self.try_update(plan, endpoints);
        if result.is_err() {
            let (settings, route_fault, bypass) = (self.settings.clone(), self.route_fault.take(), self.bypass.clone());
            *self = Translator::new(settings);
            self.route_fault = route_fault;
            self.bypass = bypass;
        }
        result
    }

    fn try_update(&mut self, plan: &GatewayPlan, endpoints: &EndpointMap) -> Result<Arc<Snapshot>, SnapshotError> {
        let mut changes = Changes::default();
        let mut retimed = self.update_revisions(plan, endpoints, &mut changes);
        retimed.extend(self.rebypassed.drain());
        self.update_routes(plan, &retimed, &mut changes);
        self.update_listener(plan, &mut changes)?;
        if changes.is_empty() {
            return Ok(self.snapshot.clone());
        }
        let mut builder = self.snapshot.to_builder();
        changes.apply(&mut builder, &mut self.referrers)?;
        let snapshot = Arc::new(builder.build());
        self.snapshot = snapshot.clone();
        Ok(snapshot)
    }

    /// Returns the revisions whose timeout changed (added and removed ones included).
    fn update_revisions(
        &mut self,
        plan: &GatewayPlan,
        endpoints: &EndpointMap,
        changes: &mut Changes,
    ) -> HashSet<ObjectKey> {
        let mut retimed = HashSet::new();
        let (paired, removed) = align(std::mem::take(&mut self.revisions), &plan.revisions, |e| &e.key, |r| &r.key);
        for entry in removed {
            let name = crate::names::revision_cluster(&entry.key);
            changes.remove(ResourceType::Cluster, &name);
            if entry.eds {
                changes.remove(ResourceType::Endpoint, &name);
            }
            self.timeouts.remove(&entry.key);
            retimed.insert(entry.key);
        }
        let mut entries = Vec::with_capacity(plan.revisions.len());
        // Plans list revisions in key order, as the endpoint map keeps them:
        // walking both together spares a lookup per revision.
        debug_assert!(plan.revisions.is_sorted_by(|a, b| a.key < b.key), "a plan's revisions are sorted by key");
        let mut live_of = ordered_lookup(endpoints);
        for (revision, previous) in plan.revisions.iter().zip(paired) {
            let live = match live_of(&revision.key) {
                Some(live) => live.as_slice(),
                // Not in the map: only the revision's own endpoints, if any.
                None => revision.static_endpoints.as_deref().unwrap_or_default(),
            };
            let live_fingerprint = endpoints_fingerprint(live);
            let fingerprint = match &previous {
                Some(entry) if Arc::ptr_eq(&entry.source, revision) && entry.live == live_fingerprint => {
                    entry.fingerprint
                }
                _ => revision_fingerprint(revision, live),
            };
            let previous = match previous {
                Some(mut entry) if entry.fingerprint == fingerprint => {
                    entry.source = revision.clone();
                    entry.live = live_fingerprint;
                    entries.push(entry);
                    continue;
                }
                previous => previous,
            };
            let deadline = response_start_deadline(revision);
            if previous.as_ref().is_none_or(|p| p.timeout_seconds != deadline) {
                self.timeouts.insert(revision.key.clone(), deadline);
                retimed.insert(revision.key.clone());
            }
            let (cluster, assignment) = revision_resources(revision, live);
            let eds = assignment.is_some();
            match assignment {
                Some(assignment) => changes.upsert(
                    ResourceType::Endpoint,
                    &assignment.cluster_name,
                    VersionedResource::new(&assignment.cluster_name, &assignment, Vec::new()),
                ),
                None if previous.is_some_and(|p| p.eds) => changes.remove(ResourceType::Endpoint, &cluster.name),
                None => {}
            }
            changes.upsert(ResourceType::Cluster, &cluster.name, VersionedResource::cluster(&cluster));
            entries.push(RevisionEntry {
                key: revision.key.clone(),
                source: revision.clone(),
                live: live_fingerprint,
                fingerprint,
                timeout_seconds: deadline,
                eds,
            });
        }
        self.revisions = entries;
        // The control plane's cluster, for the gateway filter: settings never change.
        if !self.control_cluster
            && let Some(filter) = &self.settings.filter
        {
            let cluster = crate::filter::control_cluster(filter);
            changes.upsert(ResourceType::Cluster, &cluster.name, VersionedResource::cluster(&cluster));
            self.control_cluster = true;
        }
        retimed
    }

    fn update_routes(&mut self, plan: &GatewayPlan, retimed: &HashSet<ObjectKey>, changes: &mut Changes) {
        let fault = self.route_fault.is_some();
        // Endpoint changes come with the very plan entries of the last
        // update: nothing a Route is built from changed, so skip the walk.
        let same_routes = self.routes.len() == plan.routes.len()
            && self.routes.iter().zip(&plan.routes).all(|(entry, route)| {
                Arc::ptr_eq(&entry.source, route)
                    && entry.input.tag_header_routing == plan.tag_header_routing
                    && entry.input.fault == fault
            });
        if same_routes && retimed.is_empty() {
            return;
        }
        let (paired, removed) = align(std::mem::take(&mut self.routes), &plan.routes, |e| &e.key, |r| &r.key);
        let mut touched = BTreeSet::new();
        for entry in removed {
            remove_route(&mut self.shards, &entry, &mut touched, changes);
        }
        let timeout_of = |key: &ObjectKey| self.timeouts.get(key).copied();
        let mut entries = Vec::with_capacity(plan.routes.len());
        // The same Routes claim the same hosts: a re-timing or a warm-path
        // switch does not hash every host of the plan again.
        let reuse_claims = same_routes && paired.iter().all(Option::is_some);
        let mut claims = (!reuse_claims).then(|| claim_hosts(plan).into_iter());
        for (route, previous) in plan.routes.iter().zip(paired) {
            let owned = match (&mut claims, &previous) {
                (Some(claims), _) => claims.next().unwrap_or_default(),
                (None, Some(entry)) => entry.input.owned.clone(),
                // `reuse_claims` saw an entry for every Route.
                (None, None) => Vec::new(),
            };
            let sends_to_retimed = !retimed.is_empty()
                && route
                    .splits
                    .iter()
                    .map(|s| &s.revision)
                    .chain(route.tags.iter().map(|t| &t.revision))
                    .any(|k| retimed.contains(k));
            let fingerprint = match &previous {
                Some(entry) if Arc::ptr_eq(&entry.source, route) => entry.input.fingerprint,
                _ => route_fingerprint(route),
            };
            let previous = match previous {
                Some(mut entry)
                    if !sends_to_retimed
                        && entry.input.fingerprint == fingerprint
                        && entry.input.owned == owned
                        && entry.input.tag_header_routing == plan.tag_header_routing
                        && entry.input.fault == fault =>
                {
                    entry.source = route.clone();
                    entries.push(entry);
                    continue;
                }
                previous => previous,
            };
            let input = RouteInput {
                fingerprint,
                owned,
                tag_header_routing: plan.tag_header_routing,
                timeouts: route_timeouts(route, timeout_of),
                fault,
                filter_off: self.settings.filter.is_some() && crate::warm::bypasses_filter(route, &self.bypass),
            };
            if let Some(mut entry) = previous {
                if entry.input == input {
                    entry.source = route.clone();
                    entries.push(entry);
                    continue;
                }
                remove_route(&mut self.shards, &entry, &mut touched, changes);
            }
            let resources = route_resources(
                route,
                &input.owned,
                input.tag_header_routing,
                &input.timeouts,
                self.settings.alias_domain.as_deref(),
            );
            let scopes = resources.map(|(mut virtual_hosts, scopes)| {
                if input.filter_off {
                    virtual_hosts.iter_mut().for_each(crate::warm::disable_filter);
                }
                let shard = crate::names::route_shard(&route.key);
                self.shards.entry(shard).or_default().insert(route.key.clone(), virtual_hosts);
                touched.insert(shard);
                scopes
                    .iter()
                    .map(|scope| {
                        changes.upsert(ResourceType::ScopedRoute, &scope.name, scope_resource(scope));
                        scope.name.clone()
                    })
                    .collect()
            });
            entries.push(RouteEntry { key: route.key.clone(), source: route.clone(), input, scopes });
        }
        self.routes = entries;
        for shard in touched {
            let name = crate::names::shard_route_configuration(shard);
            match self.shards.get(&shard) {
                Some(members) if !members.is_empty() => {
                    let configuration =
                        shard_configuration(shard, members.values().flatten().cloned(), self.route_fault.as_ref());
                    changes.upsert(
                        ResourceType::Route,
                        &name,
                        VersionedResource::new(&name, &configuration, Vec::new()),
                    );
                }
                _ => {
                    self.shards.remove(&shard);
                    changes.remove(ResourceType::Route, &name);
                }
            }
        }
    }

    fn update_listener(&mut self, plan: &GatewayPlan, changes: &mut Changes) -> Result<(), SnapshotError> {
        let idle_timeout = effective_stream_idle_timeout(plan, &self.settings);
        if self.listener == Some(idle_timeout) {
            return Ok(());
        }
        let filters = self.settings.filter.iter().map(crate::filter::wasm_http_filter).collect();
        let listener = http_listener(&self.settings, idle_timeout, filters);
        changes.upsert(ResourceType::Listener, &listener.name, listener_resource(&listener)?);
        self.listener = Some(idle_timeout);
        Ok(())
    }
}

/// A fingerprint of everything a revision's resources are built from,
/// standing in for a copy of it: comparing one number touches one cache
/// line, where comparing field by field chases every string. (Every field
/// is named, so a new one does not go unnoticed.)
fn revision_fingerprint(revision: &RevisionBackend, live: &[Endpoint]) -> u64 {
    let RevisionBackend {
        key,
        configuration,
        service,
        protocol,
        container_concurrency,
        timeout_seconds,
        response_start_timeout_seconds,
        idle_timeout_seconds,
        static_endpoints,
    } = revision;
    let mut hasher = DefaultHasher::new();
    let timeouts = (timeout_seconds, response_start_timeout_seconds, idle_timeout_seconds);
    (key, configuration, service, container_concurrency, timeouts, static_endpoints, live).hash(&mut hasher);
    // The protocol is not `Hash`; what it changes is whether the cluster speaks HTTP/2.
    (*protocol == UpstreamProtocol::H2c).hash(&mut hasher);
    hasher.finish()
}

/// A fingerprint of a revision's live endpoints.
fn endpoints_fingerprint(live: &[Endpoint]) -> u64 {
    let mut hasher = DefaultHasher::new();
    live.hash(&mut hasher);
    hasher.finish()
}

/// A fingerprint of everything a Route's resources are built from, besides
/// what [`RouteInput`] holds.
fn route_fingerprint(route: &RoutePlan) -> u64 {
    let RoutePlan { key, host, splits, tags, mappings } = route;
    let mut hasher = DefaultHasher::new();
    (key, host).hash(&mut hasher);
    for Split { revision, percent } in splits {
        (revision, percent).hash(&mut hasher);
    }
    hasher.write_u8(0xff);
    for TagPlan { tag, host, revision } in tags {
        (tag, host, revision).hash(&mut hasher);
    }
    hasher.write_u8(0xff);
    for MappedHost { host, rewrite_host } in mappings {
        (host, rewrite_host).hash(&mut hasher);
    }
    hasher.finish()
}

/// Pairs each new object with the previous entry for the same key: by
/// position first (plans keep their order, so this is a comparison of two
/// keys), by a key index built only when positions disagree. Returns the
/// previous entry per new object (`None`: new) and the entries no new
/// object claimed (removed).
fn align<E, T>(
    previous: Vec<E>,
    next: &[T],
    entry_key: impl Fn(&E) -> &ObjectKey,
    key: impl Fn(&T) -> &ObjectKey,
) -> (Vec<Option<E>>, Vec<E>) {
    let mut previous: Vec<Option<E>> = previous.into_iter().map(Some).collect();
    let mut index: Option<HashMap<ObjectKey, usize>> = None;
    let mut paired = Vec::with_capacity(next.len());
    for (i, item) in next.iter().enumerate() {
        let wanted = key(item);
        if let Some(slot) = previous.get_mut(i)
            && slot.as_ref().is_some_and(|e| entry_key(e) == wanted)
        {
            paired.push(slot.take());
            continue;
        }
        let index = index.get_or_insert_with(|| {
            previous.iter().enumerate().filter_map(|(j, e)| e.as_ref().map(|e| (entry_key(e).clone(), j))).collect()
        });
        paired.push(index.get(wanted).and_then(|j| previous.get_mut(*j)).and_then(Option::take));
    }
    (paired, previous.into_iter().flatten().collect())
}

/// Removes a Route's scopes and takes its virtual hosts out of its shard,
/// which `touched` collects for rebuilding.
fn remove_route(
    shards: &mut HashMap<u32, BTreeMap<ObjectKey, Vec<VirtualHost>>>,
    entry: &RouteEntry,
    touched: &mut BTreeSet<u32>,
    changes: &mut Changes,
) {
    let Some(scopes) = &entry.scopes else { return };
    for scope in scopes {
        changes.remove(ResourceType::ScopedRoute, scope);
    }
    let shard = crate::names::route_shard(&entry.key);
    if let Some(members) = shards.get_mut(&shard) {
        members.remove(&entry.key);
    }
    touched.insert(shard);
}

/// Resources to remove and to add or replace. Removals apply first, so a
/// name that moves from one object to another in one update (a host passed
/// to another Route) ends up present.
#[derive(Debug, Default)]
struct Changes {
    removed: Vec<(ResourceType, String)>,
    upserted: Vec<(ResourceType, String, VersionedResource)>,
}

impl Changes {
    fn upsert(&mut self, resource_type: ResourceType, name: &str, resource: VersionedResource) {
        self.upserted.push((resource_type, name.to_owned(), resource));
    }

    fn remove(&mut self, resource_type: ResourceType, name: &str) {
        self.removed.push((resource_type, name.to_owned()));
    }

    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }

    /// Applies the changes and checks that they leave no dangling
    /// reference, keeping `referrers` (references per name) current.
    fn apply(
        self,
        builder: &mut SnapshotBuilder,
        referrers: &mut HashMap<(ResourceType, String), u32>,
    ) -> Result<(), SnapshotError> {
        // A name removed and added again is a replacement: an equal one
        // leaves its type untouched.
        let upserted: HashSet<(ResourceType, &str)> =
            self.upserted.iter().map(|(t, name, _)| (*t, name.as_str())).collect();
        let mut gone = Vec::new();
        for (resource_type, name) in &self.removed {
            if upserted.contains(&(*resource_type, name.as_str())) {
                continue;
            }
            if let Some(old) = builder.remove(*resource_type, name) {
                release(referrers, old.references());
                gone.push((*resource_type, name.clone()));
            }
        }
        let mut added = Vec::new();
        for (resource_type, name, resource) in self.upserted {
            let resource = Arc::new(resource);
            let replaced = match builder.upsert(resource_type, &name, resource.clone()) {
                Upserted::Unchanged => continue,
                Upserted::Added => None,
                Upserted::Replaced(old) => Some(old),
            };
            if let Some(old) = replaced {
                release(referrers, old.references());
            }
            for reference in resource.references() {
                *referrers.entry(reference.clone()).or_default() += 1;
            }
            added.push((resource_type, name, resource));
        }
        for (resource_type, name) in gone {
            if referrers.get(&(resource_type, name.clone())).is_some_and(|n| *n > 0)
                && !builder.contains(resource_type, &name)
                && let Some((referrer_type, referrer)) = builder.referrer_of(resource_type, &name)
            {
                return Err(SnapshotError::Missing {
                    resource_type: referrer_type,
                    name: referrer,
                    referenced_type: resource_type,
                    referenced: name,
                });
            }
        }
        for (resource_type, name, resource) in added {
            for (referenced_type, referenced) in resource.references() {
                if !builder.contains(*referenced_type, referenced) {
                    return Err(SnapshotError::Missing {
                        resource_type,
                        name,
                        referenced_type: *referenced_type,
                        referenced: referenced.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn release(referrers: &mut HashMap<(ResourceType, String), u32>, references: &[(ResourceType, String)]) {
    for reference in references {
        if let Some(count) = referrers.get_mut(reference) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                referrers.remove(reference);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use revgate_model::plan::{Endpoint, Split};

    use super::*;
    use crate::translate::tests::{endpoints, key, plan};
    use crate::translate::translate;

    fn versions(s: &Snapshot) -> Vec<(ResourceType, Vec<(String, String)>)> {
        ResourceType::ALL
            .into_iter()
            .map(|t| (t, s.get(t).resources.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect()))
            .collect()
    }

    fn whole(plan: &GatewayPlan, endpoints: &EndpointMap) -> Snapshot {
        Snapshot::new(&translate(plan, endpoints, &XdsSettings::default()))
    }

    #[test]
    fn a_bypass_change_touches_only_the_routes_and_matches_a_whole_translation() {
        let filter = crate::filter::FilterSettings {
            wasm_path: "/filter.wasm".to_owned(),
            control_address: std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
            configuration: "{}".to_owned(),
        };
        let settings = XdsSettings { filter: Some(filter), ..XdsSettings::default() };
        let mut single = plan();
        let mut route = (*single.routes[0]).clone();
        route.splits = vec![Split { revision: key("hello-00001"), percent: 100 }];
        single.routes[0] = Arc::new(route);
        let mut translator = Translator::new(settings.clone());
        let before = translator.update(&single, &endpoints()).expect("consistent");
        let bypass: BTreeSet<ObjectKey> = [key("hello-00001"), key("hello-00002")].into();
        translator.set_bypass(Arc::new(bypass.clone()));
        let after = translator.update(&single, &endpoints()).expect("consistent");
        let whole = Snapshot::new(&crate::translate::translate_bypassing(&single, &endpoints(), &settings, &bypass));
        assert_eq!(versions(&after), versions(&whole));
        for kind in ResourceType::ALL {
            let changed = before.version(kind) != after.version(kind);
            assert_eq!(changed, kind == ResourceType::Route, "{kind:?}");
        }
        translator.set_bypass(Arc::new(BTreeSet::new()));
        let back = translator.update(&single, &endpoints()).expect("consistent");
        assert_eq!(versions(&back), versions(&before), "the filter is back on");
    }

    #[test]
    fn equal_inputs_give_what_a_whole_translation_gives() {
        let mut translator = Translator::new(XdsSettings::default());
        let first = translator.update(&plan(), &endpoints()).expect("consistent");
        assert_eq!(versions(&first), versions(&whole(&plan(), &endpoints())));
        assert_eq!(first.consistency_check(), Ok(()));
        let again = translator.update(&plan(), &endpoints()).expect("consistent");
        assert!(Arc::ptr_eq(&first, &again), "nothing changed, nothing built");
    }

    #[test]
    fn an_endpoint_change_touches_only_endpoints() {
        // The owner passes the very plan entries of the last update (the
        // translator then skips the routes), a fresh plan has equal ones.
        let first = plan();
        for (case, next) in [("the same plan entries", first.clone()), ("equal plan entries", plan())] {
            let mut translator = Translator::new(XdsSettings::default());
            let before = translator.update(&first, &endpoints()).expect("consistent");
            let mut moved = endpoints();
            moved.insert(key("hello-00002"), vec![Endpoint { host: "10.0.0.9".into(), port: 8080 }]);
            let after = translator.update(&next, &moved).expect("consistent");
            for t in [ResourceType::Cluster, ResourceType::Listener, ResourceType::ScopedRoute, ResourceType::Route] {
                let (b, a) = (before.shared(t).expect("type"), after.shared(t).expect("type"));
                assert!(Arc::ptr_eq(b, a), "{case}: {t} shared, not rebuilt");
            }
            assert_ne!(before.version(ResourceType::Endpoint), after.version(ResourceType::Endpoint), "{case}");
            assert_eq!(versions(&after), versions(&whole(&plan(), &moved)), "{case}");
        }
    }

    #[test]
    fn a_split_change_touches_one_route_configuration() {
        let mut translator = Translator::new(XdsSettings::default());
        let before = translator.update(&plan(), &endpoints()).expect("consistent");
        let mut changed = plan();
        Arc::make_mut(&mut changed.routes[0]).splits = vec![
            Split { revision: key("hello-00001"), percent: 50 },
            Split { revision: key("hello-00002"), percent: 50 },
        ];
        let after = translator.update(&changed, &endpoints()).expect("consistent");
        for t in [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener, ResourceType::ScopedRoute] {
            assert!(Arc::ptr_eq(before.shared(t).expect("type"), after.shared(t).expect("type")), "{t}");
        }
        assert_ne!(before.version(ResourceType::Route), after.version(ResourceType::Route));
        assert_eq!(versions(&after), versions(&whole(&changed, &endpoints())));
    }

    #[test]
    fn removed_objects_take_their_resources_along() {
        let mut translator = Translator::new(XdsSettings::default());
        translator.update(&plan(), &endpoints()).expect("consistent");
        let empty = translator.update(&GatewayPlan::default(), &EndpointMap::new()).expect("consistent");
        assert_eq!(versions(&empty), versions(&whole(&GatewayPlan::default(), &EndpointMap::new())));
        assert_eq!(empty.get(ResourceType::Listener).resources.len(), 1);
    }

    #[test]
    fn a_host_passing_to_another_route_keeps_its_scope() {
        let mut translator = Translator::new(XdsSettings::default());
        let mut two = plan();
        let mut other = (*two.routes[0]).clone();
        other.key = key("other");
        other.tags.clear();
        two.routes.push(Arc::new(other));
        translator.update(&two, &endpoints()).expect("consistent");
        // The first Route goes: its host passes to the second.
        two.routes.remove(0);
        let after = translator.update(&two, &endpoints()).expect("consistent");
        assert_eq!(after.consistency_check(), Ok(()));
        assert_eq!(versions(&after), versions(&whole(&two, &endpoints())));
    }

    #[test]
    fn a_route_fault_applies_to_routes_translated_while_it_is_set() {
        let mut translator = Translator::new(XdsSettings::default());
        let clean = translator.update(&plan(), &endpoints()).expect("consistent");
        translator.set_route_fault(Some(VirtualHost { name: "fault".into(), ..Default::default() }));
        let faulted = translator.update(&plan(), &endpoints()).expect("consistent");
        assert_ne!(clean.version(ResourceType::Route), faulted.version(ResourceType::Route));
        translator.set_route_fault(None);
        let cleared = translator.update(&plan(), &endpoints()).expect("consistent");
        assert_eq!(clean.version(ResourceType::Route), cleared.version(ResourceType::Route));
    }

    #[test]
    fn services_added_in_the_middle_pair_by_key() {
        let mut translator = Translator::new(XdsSettings::default());
        let mut grown = plan();
        let first = translator.update(&grown, &endpoints()).expect("consistent");
        // A new Route and revision ahead of the others: positions shift.
        let mut other = (*grown.routes[0]).clone();
        other.key = key("aaa");
        other.host = "aaa.default.example.com".into();
        other.tags.clear();
        grown.routes.insert(0, Arc::new(other));
        let after = translator.update(&grown, &endpoints()).expect("consistent");
        assert_eq!(versions(&after), versions(&whole(&grown, &endpoints())));
        assert!(Arc::ptr_eq(
            first.shared(ResourceType::Cluster).expect("type"),
            after.shared(ResourceType::Cluster).expect("type")
        ));
    }

    #[test]
    fn a_change_leaving_a_dangling_reference_is_refused() {
        let mut translator = Translator::new(XdsSettings::default());
        translator.update(&plan(), &endpoints()).expect("consistent");
        let mut changes = Changes::default();
        changes.remove(ResourceType::Endpoint, "rev|default|hello-00001");
        let mut builder = translator.snapshot().to_builder();
        assert_eq!(
            changes.apply(&mut builder, &mut translator.referrers),
            Err(SnapshotError::Missing {
                resource_type: ResourceType::Cluster,
                name: "rev|default|hello-00001".into(),
                referenced_type: ResourceType::Endpoint,
                referenced: "rev|default|hello-00001".into(),
            })
        );
    }

    #[test]
    fn a_timeout_change_retranslates_the_routes_to_that_revision() {
        let mut translator = Translator::new(XdsSettings::default());
        let before = translator.update(&plan(), &endpoints()).expect("consistent");
        let mut slower = plan();
        let slower_revision = Arc::make_mut(&mut slower.revisions[1]);
        slower_revision.timeout_seconds = 900;
        slower_revision.response_start_timeout_seconds = 900;
        let after = translator.update(&slower, &endpoints()).expect("consistent");
        assert_ne!(before.version(ResourceType::Route), after.version(ResourceType::Route));
        assert_eq!(versions(&after), versions(&whole(&slower, &endpoints())));
    }
}
