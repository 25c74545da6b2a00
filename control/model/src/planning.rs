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
//! | a Route's plan | it is the same stored object, its targets resolve to the same revisions, tags and percentages, and the settings are unchanged | any of those changes |
//!
//! "The same stored object" is pointer identity: a [`World`] keeps the
//! allocation of every object an apply leaves equal, so identity means
//! "not written since". Reused entries are shared (`Arc`), so the next
//! plan compares equal to the previous one entry by entry at the cost of a
//! pointer comparison, and so does whatever keeps the previous plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Settings;
use crate::meta::{CONFIGURATION_LABEL, ENDPOINTS_ANNOTATION, SERVICE_LABEL};
use crate::names;
use crate::observed::Observed;
use crate::plan::{
    GatewayPlan, ObjectKey, RevisionBackend, RoutePlan, Split, TagPlan, UpstreamProtocol, parse_endpoints,
};
use crate::resources::{ConfigMap, Revision, Route};
use crate::status::{ResolvedTarget, resolve, route_naming, serves};
use crate::world::World;

/// The entries of the last plan and the inputs they were built from.
#[derive(Debug, Default)]
pub struct PlanMemo {
    /// The ConfigMaps the settings came from, and those settings; any
    /// change to them rebuilds everything.
    basis: Option<(BTreeMap<ObjectKey, Arc<ConfigMap>>, Settings)>,
    /// By key, as the world keeps them, so a plan walks the world and its
    /// memo side by side instead of looking each entry up.
    routes: Vec<RouteEntry>,
    revisions: Vec<(Arc<Revision>, Arc<RevisionBackend>)>,
}

#[derive(Debug)]
struct RouteEntry {
    route: Arc<Route>,
    targets: Vec<ResolvedTarget>,
    plan: Arc<RoutePlan>,
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
        let PlanMemo { basis, routes: memo_routes, revisions: memo_revisions } = memo;
        if basis.as_ref().is_none_or(|(config_maps, _)| *config_maps != self.config_maps) {
            memo_routes.clear();
            memo_revisions.clear();
        }
        let (_, settings) = match basis {
            Some(basis) if basis.0 == self.config_maps => basis,
            _ => basis.insert((self.config_maps.clone(), self.settings())),
        };
        let settings = &*settings;

        let mut previous = std::mem::take(memo_routes).into_iter().peekable();
        for (key, route) in &self.routes {
            while previous.next_if(|entry| entry.plan.key < *key).is_some() {}
            let last = previous.next_if(|entry| entry.plan.key == *key);
            if let Some(entry) = self.route_entry(key, route, observed, settings, last) {
                memo_routes.push(entry);
            }
        }
        let routes = memo_routes.iter().map(|entry| entry.plan.clone()).collect();

        let mut previous = std::mem::take(memo_revisions).into_iter().peekable();
        for (key, revision) in &self.revisions {
            while previous.next_if(|(_, built)| built.key < *key).is_some() {}
            let entry = previous
                .next_if(|(_, built)| built.key == *key)
                .filter(|(seen, _)| Arc::ptr_eq(seen, revision))
                .unwrap_or_else(|| (revision.clone(), Arc::new(backend(revision, settings))));
            memo_revisions.push(entry);
        }
        let revisions = memo_revisions.iter().map(|(_, built)| built.clone()).collect();

        GatewayPlan { routes, revisions, tag_header_routing: settings.features.tag_header_based_routing }
    }

    /// One route's plan (`last` if its inputs are unchanged), or `None` if
    /// the gateway serves nothing for it.
    fn route_entry(
        &self,
        key: &ObjectKey,
        route: &Arc<Route>,
        observed: &Observed,
        settings: &Settings,
        last: Option<RouteEntry>,
    ) -> Option<RouteEntry> {
        let traffic = self.traffic_in_effect(route)?;
        let resolution = resolve(self, &route.metadata.namespace, traffic, observed);
        if !serves(&resolution, traffic) {
            return None;
        }
        let targets: Vec<ResolvedTarget> = resolution.into_iter().flatten().collect();
        if let Some(entry) = last
            && Arc::ptr_eq(&entry.route, route)
            && entry.targets == targets
        {
            return Some(entry);
        }
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
        });
        Some(RouteEntry { route: route.clone(), targets, plan })
    }
}

/// A revision's backend: what the gateway needs to reach and limit it.
fn backend(revision: &Revision, settings: &Settings) -> RevisionBackend {
    let spec = &revision.spec;
    let h2c = spec.serving_container().and_then(|c| c.ports.first()).is_some_and(|p| p.name == "h2c");
    RevisionBackend {
        key: revision.metadata.key(),
        configuration: revision.metadata.labels.get(CONFIGURATION_LABEL).cloned().unwrap_or_default(),
        service: revision.metadata.labels.get(SERVICE_LABEL).cloned(),
        protocol: if h2c { UpstreamProtocol::H2c } else { UpstreamProtocol::Http1 },
        container_concurrency: spec.container_concurrency.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        timeout_seconds: spec
            .timeout_seconds
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or_else(|| u64::try_from(settings.defaults.revision_timeout_seconds).unwrap_or(300)),
        static_endpoints: revision.metadata.annotations.get(ENDPOINTS_ANNOTATION).and_then(|v| parse_endpoints(v).ok()),
    }
}
