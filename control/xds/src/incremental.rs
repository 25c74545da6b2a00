//! Incremental translation: the next snapshot costs what changed.
//!
//! A [`Translator`] keeps, per input object, the input it last translated
//! and the names of the resources that came out of it:
//!
//! | input                                   | resources                                  |
//! |-----------------------------------------|--------------------------------------------|
//! | a revision and its endpoints            | its cluster and load assignment (CDS, EDS) |
//! | a Route, the hosts it owns, its         | its route configuration (RDS) and one      |
//! | revisions' timeouts, tag-header routing | scope per host (SRDS)                      |
//! | the settings and the longest timeout    | the listener (LDS), the control cluster    |
//!
//! [`Translator::update`] compares each object of the new plan with what it
//! had (a field-by-field comparison, no encoding), translates and encodes
//! only the objects that differ, and applies those resources to the
//! previous snapshot ([`crate::snapshot::SnapshotBuilder`]): types nothing
//! touched stay shared, so an endpoint change is an EDS-only change and a
//! split change is one RDS resource. The translation itself is the pure
//! [`crate::translate`]; equal inputs give the resources `translate` gives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use revgate_model::plan::{Endpoint, EndpointMap, GatewayPlan, ObjectKey, RevisionBackend, RoutePlan};

use crate::snapshot::{
    ResourceType, Snapshot, SnapshotBuilder, SnapshotError, VersionedResource, listener_resource, scope_resource,
};
use crate::translate::{
    XdsSettings, claim_hosts, effective_stream_idle_timeout, http_listener, revision_endpoints, revision_resources,
    route_resources, route_timeouts,
};

/// Translates successive plans into successive snapshots, each change
/// costing what it changes. Owned by the one task that publishes snapshots.
#[derive(Debug)]
pub struct Translator {
    settings: XdsSettings,
    /// A virtual host appended to every route configuration translated
    /// while set: fault injection (a gateway that rejects routes).
    route_fault: Option<VirtualHost>,
    snapshot: Arc<Snapshot>,
    revisions: HashMap<ObjectKey, RevisionEntry>,
    routes: HashMap<ObjectKey, RouteEntry>,
    /// The listener's input: the effective idle timeout.
    listener: Option<Duration>,
    /// Bumped by every update; entries not seen in an update are gone.
    pass: u64,
}

#[derive(Debug)]
struct RevisionEntry {
    revision: RevisionBackend,
    endpoints: Vec<Endpoint>,
    /// Whether the revision has an EDS assignment (not a DNS cluster).
    eds: bool,
    seen: u64,
}

#[derive(Debug)]
struct RouteEntry {
    input: RouteInput,
    /// Scope names, when the Route owns at least one host.
    scopes: Option<Vec<String>>,
    seen: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct RouteInput {
    route: RoutePlan,
    owned: Vec<bool>,
    tag_header_routing: bool,
    timeouts: Vec<u64>,
    fault: bool,
}

impl Translator {
    pub fn new(settings: XdsSettings) -> Self {
        Self {
            settings,
            route_fault: None,
            snapshot: Arc::new(Snapshot::empty()),
            revisions: HashMap::new(),
            routes: HashMap::new(),
            listener: None,
            pass: 0,
        }
    }

    /// Sets (or clears) a virtual host appended to every route
    /// configuration while set (the next update retranslates them all).
    pub fn set_route_fault(&mut self, fault: Option<VirtualHost>) {
        self.route_fault = fault;
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Translates what changed since the last update and returns the next
    /// snapshot (the same `Arc` when nothing changed).
    pub fn update(&mut self, plan: &GatewayPlan, endpoints: &EndpointMap) -> Result<Arc<Snapshot>, SnapshotError> {
        self.pass += 1;
        let mut changes = Changes::default();
        self.update_revisions(plan, endpoints, &mut changes);
        self.update_routes(plan, &mut changes);
        self.update_listener(plan, &mut changes)?;
        if changes.is_empty() {
            return Ok(self.snapshot.clone());
        }
        let mut builder = self.snapshot.to_builder();
        changes.apply(&mut builder);
        let snapshot = Arc::new(builder.build());
        self.snapshot = snapshot.clone();
        Ok(snapshot)
    }

    fn update_revisions(&mut self, plan: &GatewayPlan, endpoints: &EndpointMap, changes: &mut Changes) {
        let pass = self.pass;
        for revision in &plan.revisions {
            let live = revision_endpoints(revision, endpoints);
            if let Some(entry) = self.revisions.get_mut(&revision.key)
                && entry.revision == *revision
                && entry.endpoints == live
            {
                entry.seen = pass;
                continue;
            }
            let (cluster, assignment) = revision_resources(revision, live);
            let had_eds = self.revisions.get(&revision.key).is_some_and(|e| e.eds);
            let eds = assignment.is_some();
            match assignment {
                Some(assignment) => changes.upsert(
                    ResourceType::Endpoint,
                    &assignment.cluster_name,
                    VersionedResource::new(&assignment.cluster_name, &assignment, Vec::new()),
                ),
                None if had_eds => changes.remove(ResourceType::Endpoint, &cluster.name),
                None => {}
            }
            changes.upsert(ResourceType::Cluster, &cluster.name, VersionedResource::cluster(&cluster));
            self.revisions.insert(
                revision.key.clone(),
                RevisionEntry { revision: revision.clone(), endpoints: live.to_vec(), eds, seen: pass },
            );
        }
        self.revisions.retain(|key, entry| {
            if entry.seen == pass {
                return true;
            }
            let name = crate::names::revision_cluster(key);
            changes.remove(ResourceType::Cluster, &name);
            if entry.eds {
                changes.remove(ResourceType::Endpoint, &name);
            }
            false
        });
        // The control plane's cluster, for the gateway filter: settings never change.
        if pass == 1
            && let Some(filter) = &self.settings.filter
        {
            let cluster = crate::filter::control_cluster(filter);
            changes.upsert(ResourceType::Cluster, &cluster.name, VersionedResource::cluster(&cluster));
        }
    }

    fn update_routes(&mut self, plan: &GatewayPlan, changes: &mut Changes) {
        let pass = self.pass;
        let revisions: HashMap<&ObjectKey, &RevisionBackend> = plan.revisions.iter().map(|r| (&r.key, r)).collect();
        let fault = self.route_fault.is_some();
        for (route, owned) in plan.routes.iter().zip(claim_hosts(plan)) {
            let timeouts = route_timeouts(route, &revisions);
            if let Some(entry) = self.routes.get_mut(&route.key)
                && entry.input.route == *route
                && entry.input.owned == owned
                && entry.input.tag_header_routing == plan.tag_header_routing
                && entry.input.timeouts == timeouts
                && entry.input.fault == fault
            {
                entry.seen = pass;
                continue;
            }
            if let Some(old) = self.routes.get(&route.key) {
                remove_route(&route.key, old, changes);
            }
            let resources =
                route_resources(route, &owned, plan.tag_header_routing, &timeouts, self.route_fault.as_ref());
            let scopes = resources.map(|(configuration, scopes)| {
                changes.upsert(
                    ResourceType::Route,
                    &configuration.name,
                    VersionedResource::new(&configuration.name, &configuration, Vec::new()),
                );
                scopes
                    .iter()
                    .map(|scope| {
                        changes.upsert(ResourceType::ScopedRoute, &scope.name, scope_resource(scope));
                        scope.name.clone()
                    })
                    .collect()
            });
            let input = RouteInput {
                route: route.clone(),
                owned,
                tag_header_routing: plan.tag_header_routing,
                timeouts,
                fault,
            };
            self.routes.insert(route.key.clone(), RouteEntry { input, scopes, seen: pass });
        }
        self.routes.retain(|key, entry| {
            let keep = entry.seen == pass;
            if !keep {
                remove_route(key, entry, changes);
            }
            keep
        });
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

fn remove_route(key: &ObjectKey, entry: &RouteEntry, changes: &mut Changes) {
    if let Some(scopes) = &entry.scopes {
        changes.remove(ResourceType::Route, &crate::names::route_configuration(key));
        for scope in scopes {
            changes.remove(ResourceType::ScopedRoute, scope);
        }
    }
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

    fn apply(self, builder: &mut SnapshotBuilder) {
        // A name removed and added again is a replacement: an equal one
        // leaves its type untouched.
        let upserted: std::collections::HashSet<(ResourceType, &str)> =
            self.upserted.iter().map(|(t, name, _)| (*t, name.as_str())).collect();
        for (resource_type, name) in &self.removed {
            if !upserted.contains(&(*resource_type, name.as_str())) {
                builder.remove(*resource_type, name);
            }
        }
        for (resource_type, name, resource) in self.upserted {
            builder.upsert(resource_type, &name, Arc::new(resource));
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
        let mut translator = Translator::new(XdsSettings::default());
        let before = translator.update(&plan(), &endpoints()).expect("consistent");
        let mut moved = endpoints();
        moved.insert(key("hello-00002"), vec![Endpoint { host: "10.0.0.9".into(), port: 8080 }]);
        let after = translator.update(&plan(), &moved).expect("consistent");
        for t in [ResourceType::Cluster, ResourceType::Listener, ResourceType::ScopedRoute, ResourceType::Route] {
            let (b, a) = (before.shared(t).expect("type"), after.shared(t).expect("type"));
            assert!(Arc::ptr_eq(b, a), "{t} shared, not rebuilt");
        }
        assert_ne!(before.version(ResourceType::Endpoint), after.version(ResourceType::Endpoint));
        assert_eq!(versions(&after), versions(&whole(&plan(), &moved)));
    }

    #[test]
    fn a_split_change_touches_one_route_configuration() {
        let mut translator = Translator::new(XdsSettings::default());
        let before = translator.update(&plan(), &endpoints()).expect("consistent");
        let mut changed = plan();
        changed.routes[0].splits = vec![
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
        let mut other = two.routes[0].clone();
        other.key = key("other");
        other.tags.clear();
        two.routes.push(other);
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
}
