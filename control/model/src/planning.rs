//! The gateway plan of a [`World`], built incrementally.
//!
//! A plan has one entry per Route and one per Revision. Most changes touch
//! one Service among thousands, so a [`PlanMemo`] kept by the caller
//! between plans lets [`World::plan_with`] reuse every entry whose inputs
//! are unchanged:
//!
//! | entry | reused while | rebuilt when |
//! |---|---|---|
//! | a Revision's backend | it is the same stored object and the settings are unchanged | the revision is re-created, or a `knative-serving` ConfigMap changes |
//! | a Route's plan (or that it serves nothing) | it is the same stored object, so is every object its traffic names (the Revision, or the Configuration and its latest created Revision), readiness observed is the same, and the settings are unchanged | any of those changes, or its latest created Revision is not ready (the plan then looks further back) |
//!
//! A Route's entry also carries the hosts DomainMappings map to it
//! (`World::mapped_hosts`, a short walk of the mappings); an entry whose
//! list is unchanged keeps its plan.
//!
//! "The same stored object" is pointer identity: a [`World`] keeps the
//! allocation of every object an apply leaves equal, so identity means
//! "not written since". Reused entries are shared (`Arc`), so the next
//! plan compares equal to the previous one entry by entry at the cost of a
//! pointer comparison, and so does whatever keeps the previous plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::Settings;
use crate::meta::{CONFIGURATION_LABEL, ENDPOINTS_ANNOTATION, SERVICE_LABEL};
use crate::names;
use crate::observed::{Observed, RevisionReadiness};
use crate::plan::{
    GatewayPlan, MappedHost, ObjectKey, RevisionBackend, RoutePlan, Split, TagPlan, UpstreamProtocol, parse_endpoints,
};
use crate::resources::{ConfigMap, Configuration, Revision, Route};
use crate::status::{ResolvedTarget, resolve, route_naming, serves};
use crate::world::World;

/// The entries of the last plan and the inputs they were built from.
#[derive(Debug, Default)]
pub struct PlanMemo {
    /// The ConfigMaps the settings came from, those settings, and the
    /// revision readiness observed; any change to them rebuilds everything.
    basis: Option<Basis>,
    /// By key, as the world keeps them, so a plan walks the world and its
    /// memo side by side instead of looking each entry up.
    routes: Vec<RouteEntry>,
    revisions: Vec<(Arc<Revision>, Arc<RevisionBackend>)>,
    configurations: Vec<(ObjectKey, Arc<Configuration>)>,
}

/// The keys of the revisions and Configurations that are not the very same
/// objects as in the last plan's world (added, removed or rewritten). A
/// Route entry is reused while none of its inputs is among them; with
/// thousands of Routes that is a look into two small sets each, where
/// looking every input up in the world cost a B-tree search.
#[derive(Debug, Default)]
struct Replaced {
    revisions: BTreeSet<ObjectKey>,
    configurations: BTreeSet<ObjectKey>,
}

#[derive(Debug)]
struct Basis {
    config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    readiness: BTreeMap<ObjectKey, RevisionReadiness>,
    settings: Settings,
}

#[derive(Debug)]
struct RouteEntry {
    key: ObjectKey,
    route: Arc<Route>,
    /// The objects its traffic was resolved from; `None` when the
    /// resolution looked beyond them (it is then redone every time).
    inputs: Option<Vec<Input>>,
    /// `None` when the gateway serves nothing for the Route.
    plan: Option<Arc<RoutePlan>>,
}

/// One object a Route's resolution read (present or not).
#[derive(Debug)]
enum Input {
    Revision(ObjectKey),
    Configuration(ObjectKey),
}

impl Input {
    /// Whether the object is as this input saw it. Every entry of the memo
    /// was checked against (or built from) the last plan's world, so it is
    /// unless that world and this one differ there.
    fn unchanged(&self, replaced: &Replaced) -> bool {
        match self {
            Input::Revision(key) => !replaced.revisions.contains(key),
            Input::Configuration(key) => !replaced.configurations.contains(key),
        }
    }
}

impl World {
    /// What the gateway must do: every route whose traffic in effect (see
    /// [`World::traffic_in_effect`]) has all its traffic-carrying targets
    /// resolved, and every revision.
    pub fn plan(&self, observed: &Observed) -> GatewayPlan {
        self.plan_with(observed, &mut PlanMemo::default())
    }

    /// [`World::plan`], reusing the entries of `memo` whose inputs did not
    /// change and leaving this plan's entries in it for the next call.
    pub fn plan_with(&self, observed: &Observed, memo: &mut PlanMemo) -> GatewayPlan {
        let PlanMemo { basis, routes: memo_routes, revisions: memo_revisions, configurations: memo_configurations } =
            memo;
        let current = |b: &Basis| b.config_maps == self.config_maps && b.readiness == observed.revisions;
        if !basis.as_ref().is_some_and(current) {
            memo_routes.clear();
            memo_revisions.clear();
            *basis = Some(Basis {
                config_maps: self.config_maps.clone(),
                readiness: observed.revisions.clone(),
                settings: self.settings(),
            });
        }
        let Some(Basis { settings, .. }) = basis.as_ref() else { return GatewayPlan::default() };
        let mut replaced = Replaced::default();

        let mut previous = std::mem::take(memo_revisions).into_iter().peekable();
        for (key, revision) in &self.revisions {
            while let Some((_, gone)) = previous.next_if(|(_, built)| built.key < *key) {
                replaced.revisions.insert(gone.key.clone());
            }
            let entry = previous
                .next_if(|(_, built)| built.key == *key)
                .filter(|(seen, _)| Arc::ptr_eq(seen, revision))
                .unwrap_or_else(|| {
                    replaced.revisions.insert(key.clone());
                    (revision.clone(), Arc::new(backend(revision, settings)))
                });
            memo_revisions.push(entry);
        }
        replaced.revisions.extend(previous.map(|(_, gone)| gone.key.clone()));
        let revisions = memo_revisions.iter().map(|(_, built)| built.clone()).collect();

        let mut previous = std::mem::take(memo_configurations).into_iter().peekable();
        for (key, configuration) in &self.configurations {
            while let Some((gone, _)) = previous.next_if(|(seen, _)| seen < key) {
                replaced.configurations.insert(gone);
            }
            match previous.next_if(|(seen, _)| seen == key) {
                Some((seen, object)) if Arc::ptr_eq(&object, configuration) => {
                    memo_configurations.push((seen, object));
                }
                _ => {
                    replaced.configurations.insert(key.clone());
                    memo_configurations.push((key.clone(), configuration.clone()));
                }
            }
        }
        replaced.configurations.extend(previous.map(|(gone, _)| gone));

        let mapped = self.mapped_hosts();
        let mut previous = std::mem::take(memo_routes).into_iter().peekable();
        for (key, route) in &self.routes {
            while previous.next_if(|entry| entry.key < *key).is_some() {}
            let last = previous.next_if(|entry| entry.key == *key);
            let mut entry = self.route_entry(key, route, observed, settings, last, &replaced);
            with_mappings(&mut entry, mapped.get(key).map(Vec::as_slice).unwrap_or_default());
            memo_routes.push(entry);
        }
        let routes = memo_routes.iter().filter_map(|entry| entry.plan.clone()).collect();

        GatewayPlan { routes, revisions, tag_header_routing: settings.features.tag_header_based_routing }
    }

    /// One route's entry: `last` if its inputs are unchanged, else built.
    fn route_entry(
        &self,
        key: &ObjectKey,
        route: &Arc<Route>,
        observed: &Observed,
        settings: &Settings,
        last: Option<RouteEntry>,
        replaced: &Replaced,
    ) -> RouteEntry {
        if let Some(entry) = last
            && Arc::ptr_eq(&entry.route, route)
            && entry.inputs.as_ref().is_some_and(|inputs| inputs.iter().all(|input| input.unchanged(replaced)))
        {
            return entry;
        }
        RouteEntry {
            key: key.clone(),
            route: route.clone(),
            inputs: self.route_inputs(route, observed),
            plan: self.route_plan(key, route, observed, settings),
        }
    }

    /// Every object a Route's traffic resolution reads: the revisions and
    /// configurations its traffic (and its last assigned traffic) names,
    /// and each configuration's latest created revision. `None` if there is
    /// none or it is not ready, as the resolution then reads every revision
    /// of the configuration.
    fn route_inputs(&self, route: &Route, observed: &Observed) -> Option<Vec<Input>> {
        let namespace = &route.metadata.namespace;
        let assigned = route.status.as_ref().map(|s| s.traffic.as_slice()).unwrap_or_default();
        let mut inputs = Vec::new();
        for target in route.spec.traffic.iter().chain(assigned) {
            match (&target.revision_name, &target.configuration_name) {
                (Some(name), _) => {
                    let key = ObjectKey::new(namespace.clone(), name.clone());
                    inputs.push(Input::Revision(key));
                }
                (None, Some(name)) => {
                    let key = ObjectKey::new(namespace.clone(), name.clone());
                    if self.configurations.contains_key(&key) {
                        let latest = self.latest_created_revision(&key)?.metadata.key();
                        if !observed.is_ready(&latest) {
                            return None;
                        }
                        inputs.push(Input::Revision(latest));
                    }
                    inputs.push(Input::Configuration(key));
                }
                (None, None) => {}
            }
        }
        Some(inputs)
    }

    /// A Route's plan, or `None` if the gateway serves nothing for it.
    fn route_plan(
        &self,
        key: &ObjectKey,
        route: &Route,
        observed: &Observed,
        settings: &Settings,
    ) -> Option<Arc<RoutePlan>> {
        let traffic = self.traffic_in_effect(route)?;
        let resolution = resolve(self, &route.metadata.namespace, traffic, observed);
        if !serves(&resolution, traffic) {
            return None;
        }
        let targets: Vec<ResolvedTarget> = resolution.into_iter().flatten().collect();
        let naming = route_naming(route, key);
        let mut splits: BTreeMap<ObjectKey, u32> = BTreeMap::new();
        let mut tags = Vec::new();
        for target in &targets {
            let percent = u32::try_from(target.percent).unwrap_or(0);
            if percent > 0 {
                *splits.entry(target.revision.clone()).or_default() += percent;
            }
            if let Some(tag) = &target.tag {
                tags.push(TagPlan {
                    host: names::tag_host(naming, tag, settings),
                    tag: tag.clone(),
                    revision: target.revision.clone(),
                });
            }
        }
        tags.sort_by(|a, b| a.tag.cmp(&b.tag));
        let plan = Arc::new(RoutePlan {
            host: names::route_host(naming, settings),
            key: key.clone(),
            splits: splits.into_iter().map(|(revision, percent)| Split { revision, percent }).collect(),
            tags,
            mappings: Vec::new(),
        });
        Some(plan)
    }
}

/// Gives a Route's plan the hosts DomainMappings map to it. The entry
/// keeps the plan it gets, so an unchanged list costs a comparison.
fn with_mappings(entry: &mut RouteEntry, mappings: &[MappedHost]) {
    if let Some(plan) = &mut entry.plan
        && plan.mappings != mappings
    {
        Arc::make_mut(plan).mappings = mappings.to_vec();
    }
}

/// A revision's backend: what the gateway needs to reach and limit it.
fn backend(revision: &Revision, settings: &Settings) -> RevisionBackend {
    let spec = &revision.spec;
    let timeout_seconds = seconds(spec.timeout_seconds, settings.defaults.revision_timeout_seconds);
    let h2c = spec.serving_container().and_then(|c| c.ports.first()).is_some_and(|p| p.name == "h2c");
    RevisionBackend {
        key: revision.metadata.key(),
        configuration: revision.metadata.labels.get(CONFIGURATION_LABEL).cloned().unwrap_or_default(),
        service: revision.metadata.labels.get(SERVICE_LABEL).cloned(),
        protocol: if h2c { UpstreamProtocol::H2c } else { UpstreamProtocol::Http1 },
        container_concurrency: spec.container_concurrency.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        timeout_seconds,
        response_start_timeout_seconds: seconds(
            spec.response_start_timeout_seconds,
            settings.defaults.revision_response_start_timeout_seconds,
        )
        .min(timeout_seconds),
        idle_timeout_seconds: seconds(spec.idle_timeout_seconds, settings.defaults.revision_idle_timeout_seconds),
        static_endpoints: revision.metadata.annotations.get(ENDPOINTS_ANNOTATION).and_then(|v| parse_endpoints(v).ok()),
    }
}

/// A revision's timeout field in seconds, else its `config-defaults` value
/// (both validated non-negative; a negative one reads as 0).
fn seconds(field: Option<i64>, default: i64) -> u64 {
    u64::try_from(field.unwrap_or(default)).unwrap_or(0)
}
