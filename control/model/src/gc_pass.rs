//! Collection passes that cost what changed: the owner of the world keeps a
//! [`Collector`], which remembers the world and plan its last pass saw and
//! when each Configuration's kept revisions turn stale.
//!
//! A pass after a change looks only at what the change can have moved, as
//! Knative's labeler reconciles one Route at a time:
//!
//! - Routes whose served entry (in the plan) or whose object (its traffic,
//!   as written or last assigned) is not the very same as before: each of
//!   their old and new revisions gets its Route set from its own
//!   `serving.knative.dev/routes` annotation (which the unchanged Routes
//!   still hold) with the changed Routes put right;
//! - revisions that are new or changed, and Configurations that are (a new
//!   latest revision): their Configuration is collected again;
//! - Configurations whose next stale revision is due.
//!
//! The first pass, and any pass after `knative-serving`'s ConfigMaps
//! changed, looks at everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Candidate, ROUTES_ANNOTATION, routing_meta};
use crate::meta::CONFIGURATION_LABEL;
use crate::plan::{GatewayPlan, ObjectKey, RoutePlan};
use crate::replaced::replaced;
use crate::resources::Route;
use crate::world::World;

/// The memory between passes (see the module docs). Pure: time is a parameter.
#[derive(Debug, Default)]
pub struct Collector {
    /// The world and plan the last pass left.
    basis: Option<(Arc<World>, Arc<GatewayPlan>)>,
    /// Per Configuration, when a kept revision turns stale (Unix seconds).
    due: BTreeMap<ObjectKey, u64>,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// The world with the routing states marked, if any changed.
    pub marked: Option<World>,
    /// Revisions to delete (from the marked world).
    pub delete: Vec<ObjectKey>,
}

impl Collector {
    /// One pass over `world` served as `plan`, at `now` (Unix seconds).
    pub fn pass(&mut self, world: &Arc<World>, plan: &Arc<GatewayPlan>, now: u64) -> Pass {
        let mut scope = match &self.basis {
            Some((before, served)) if before.config_maps == world.config_maps => {
                Some(Scope::between(before, served, world, plan))
            }
            _ => None,
        };
        let Some(scope) = scope.as_mut() else { return self.full(world, plan, now) };

        let mut marked: Option<World> = None;
        let mut configurations = std::mem::take(&mut scope.configurations);
        for key in &scope.revisions {
            let Some(revision) = world.revisions.get(key) else { continue };
            let routes = scope.routes_of(key, &revision.metadata.annotations);
            if let Some(meta) = routing_meta(&revision.metadata, &routes, now) {
                let next = marked.get_or_insert_with(|| (**world).clone());
                if let Some(stored) = next.revisions.get_mut(key) {
                    meta.write(&mut Arc::make_mut(stored).metadata);
                }
            }
            if let Some(configuration) = revision.metadata.labels.get(CONFIGURATION_LABEL) {
                configurations.insert(ObjectKey::new(key.namespace.clone(), configuration.clone()));
            }
        }
        configurations.extend(self.due.iter().filter(|(_, at)| **at <= now).map(|(key, _)| key.clone()));

        let current = marked.as_ref().unwrap_or(world);
        let config = current.settings().gc;
        if config.is_disabled() {
            self.due.clear();
            return Pass { marked, delete: Vec::new() };
        }
        let groups = if configurations.is_empty() {
            BTreeMap::new()
        } else {
            let wanted: BTreeSet<(&str, &str)> =
                configurations.iter().map(|key| (key.namespace.as_str(), key.name.as_str())).collect();
            candidates(current, |namespace, configuration| wanted.contains(&(namespace, configuration)))
        };
        for key in &configurations {
            self.due.remove(key);
        }
        let (delete, due) = current.collect_configurations(&config, groups, now);
        self.due.extend(due);
        Pass { marked, delete }
    }

    /// A pass over everything: the first one, or after the settings changed.
    fn full(&mut self, world: &Arc<World>, plan: &Arc<GatewayPlan>, now: u64) -> Pass {
        let marked = world.with_routing_states(plan, now);
        let current = marked.as_ref().unwrap_or(world);
        let config = current.settings().gc;
        self.due.clear();
        if config.is_disabled() {
            return Pass { marked, delete: Vec::new() };
        }
        let groups = candidates(current, |_, _| true);
        let (delete, due) = current.collect_configurations(&config, groups, now);
        self.due = due;
        Pass { marked, delete }
    }

    /// Remembers the world and plan that the pass's changes (if any) led to.
    pub fn settle(&mut self, world: Arc<World>, plan: Arc<GatewayPlan>) {
        self.basis = Some((world, plan));
    }

    /// When the next kept revision turns stale (Unix seconds).
    pub fn next_check(&self) -> Option<u64> {
        self.due.values().min().copied()
    }
}

/// A revision is routed while the labeler lists a Route on it.
fn is_routed(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(ROUTES_ANNOTATION).is_some_and(|r| !r.is_empty())
}

/// The revisions of the Configurations `wanted` accepts, each routed as
/// its Route annotation says, grouped by Configuration. One walk over the
/// revisions, whatever the number of Configurations: an apply of thousands
/// of Services asks for thousands of them, and a walk per Configuration
/// made such a pass quadratic. `wanted` takes a namespace and a
/// Configuration name, so the revisions of other Configurations cost no
/// allocation.
fn candidates(world: &World, wanted: impl Fn(&str, &str) -> bool) -> BTreeMap<ObjectKey, Vec<Candidate>> {
    let mut groups: BTreeMap<ObjectKey, Vec<Candidate>> = BTreeMap::new();
    for (key, revision) in &world.revisions {
        let Some(configuration) = revision.metadata.labels.get(CONFIGURATION_LABEL) else { continue };
        if wanted(&key.namespace, configuration) {
            let candidate = Candidate::of(&revision.metadata, is_routed(&revision.metadata.annotations));
            let configuration = ObjectKey::new(key.namespace.clone(), configuration.clone());
            groups.entry(configuration).or_default().push(candidate);
        }
    }
    groups
}

/// What a change between two passes can have moved.
struct Scope {
    /// Routes that changed.
    changed_routes: BTreeSet<ObjectKey>,
    /// Per revision, the changed Routes that send it traffic now.
    routed_by_changed: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// Revisions whose routing state may have changed.
    revisions: BTreeSet<ObjectKey>,
    /// Configurations to collect again.
    configurations: BTreeSet<ObjectKey>,
}

impl Scope {
    fn between(before: &World, served: &GatewayPlan, world: &World, plan: &GatewayPlan) -> Self {
        let old_plan = planned(served);
        let new_plan = planned(plan);
        let mut route_keys: BTreeSet<&ObjectKey> = replaced(old_plan.iter().copied(), new_plan.iter().copied());
        route_keys.extend(replaced(&before.routes, &world.routes));
        let old_plan: BTreeMap<&ObjectKey, &Arc<RoutePlan>> =
            old_plan.into_iter().filter(|(key, _)| route_keys.contains(key)).collect();
        let new_plan: BTreeMap<&ObjectKey, &Arc<RoutePlan>> =
            new_plan.into_iter().filter(|(key, _)| route_keys.contains(key)).collect();

        let mut changed_routes = BTreeSet::new();
        let mut routed_by_changed: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
        let mut revisions = BTreeSet::new();
        for key in route_keys {
            let now_served = served_by(new_plan.get(key).map(|e| e.as_ref()), world.routes.get(key).map(Arc::as_ref));
            let was_served = served_by(old_plan.get(key).map(|e| e.as_ref()), before.routes.get(key).map(Arc::as_ref));
            for name in &now_served {
                let revision = ObjectKey::new(key.namespace.clone(), name.clone());
                routed_by_changed.entry(revision).or_default().insert(key.name.clone());
            }
            let namespace = &key.namespace;
            revisions
                .extend(was_served.into_iter().chain(now_served).map(|name| ObjectKey::new(namespace.clone(), name)));
            changed_routes.insert(key.clone());
        }
        revisions.extend(
            replaced(&before.revisions, &world.revisions)
                .into_iter()
                .filter(|key| world.revisions.contains_key(*key))
                .cloned(),
        );
        let configurations = replaced(&before.configurations, &world.configurations)
            .into_iter()
            .filter(|key| world.configurations.contains_key(*key))
            .cloned()
            .collect();
        Self { changed_routes, routed_by_changed, revisions, configurations }
    }

    /// The Routes sending `revision` traffic now: those its annotation lists
    /// that did not change, and the changed ones that name it.
    fn routes_of(&self, revision: &ObjectKey, annotations: &BTreeMap<String, String>) -> BTreeSet<String> {
        let namespace = &revision.namespace;
        let listed = annotations.get(ROUTES_ANNOTATION).map(String::as_str).unwrap_or_default();
        let mut routes: BTreeSet<String> = listed
            .split(',')
            .filter(|name| !name.is_empty())
            .filter(|name| !self.changed_routes.contains(&ObjectKey::new(namespace.clone(), (*name).to_string())))
            .map(str::to_string)
            .collect();
        routes.extend(self.routed_by_changed.get(revision).into_iter().flatten().cloned());
        routes
    }
}

fn planned(plan: &GatewayPlan) -> Vec<(&ObjectKey, &Arc<RoutePlan>)> {
    plan.routes.iter().map(|route| (&route.key, route)).collect()
}

/// The revision names a Route sends traffic to: its served entry's splits
/// and tags, and the revisions its traffic names (as written or last assigned).
fn served_by(entry: Option<&RoutePlan>, route: Option<&Route>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(entry) = entry {
        names.extend(entry.splits.iter().map(|s| s.revision.name.clone()));
        names.extend(entry.tags.iter().map(|t| t.revision.name.clone()));
    }
    if let Some(route) = route {
        let assigned = route.status.iter().flat_map(|s| s.traffic.iter());
        names.extend(route.spec.traffic.iter().chain(assigned).filter_map(|t| t.revision_name.clone()));
    }
    names
}
