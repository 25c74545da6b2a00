//! Status and routing, computed from the applied world and what was
//! observed outside it. Nothing here is stored: status is recomputed on
//! every read, the way Knative's reconcilers would converge to it.
//!
//! A Route's conditions:
//!
//! | AllTrafficAssigned | IngressReady | Ready |
//! |---|---|---|
//! | True  | True (gateway accepted)            | True |
//! | True  | Unknown `IngressNotConfigured`      | Unknown |
//! | True  | False `GatewayRejected`             | False |
//! | False `RevisionMissing` / `ConfigurationMissing` (target absent), never assigned before | Unknown | False |
//! | False `RevisionMissing` / `ConfigurationMissing` (target absent), earlier traffic kept | as for that traffic | False |
//! | Unknown `RevisionMissing` (target exists, nothing ready yet)      | Unknown | Unknown |
//!
//! A Route whose traffic names a revision or configuration that does not
//! exist keeps its last traffic whose targets all existed (see
//! [`World::traffic_in_effect`]): the gateway goes on serving it and
//! `status.traffic` shows it, while `AllTrafficAssigned` says why the new
//! traffic is not in effect, with Knative's reason and message.
//!
//! A Service's `ConfigurationsReady` and `RoutesReady` mirror its children's
//! `Ready`; its `Ready` is True when both are, else the first False (or Unknown).
//!
//! A Revision's conditions, and the `Ready` of a Configuration whose latest
//! created revision it is, follow the observed [`RevisionReadiness`]:
//!
//! | observed | ContainerHealthy | ResourcesAvailable | Revision Ready | Configuration Ready |
//! |---|---|---|---|---|
//! | Ready | True | True | True | True |
//! | Deploying | Unknown `Deploying` | Unknown `Deploying` | Unknown `Deploying` | Unknown `Deploying` |
//! | NotReady (reason) | False (reason) | Unknown (reason) | False (reason) | False `RevisionFailed` |

use std::sync::Arc;

use crate::config::Settings;
use crate::manifest::{Document, Resource};
use crate::meta::{Condition, ConditionStatus};
use crate::names::{self, RouteNaming};
use crate::observed::{IngressState, Observed, RevisionReadiness};
use crate::plan::{GatewayPlan, ObjectKey};
use crate::resources::{
    Addressable, Configuration, ConfigurationStatus, Revision, RevisionStatus, Route, RouteStatus, Service,
    ServiceStatus, TrafficTarget,
};
use crate::world::World;

/// Condition types and reasons revgate reports.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const ALL_TRAFFIC_ASSIGNED: &str = "AllTrafficAssigned";
    pub const INGRESS_READY: &str = "IngressReady";
    pub const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
    pub const ROUTES_READY: &str = "RoutesReady";
    pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
    pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";

    pub const REVISION_MISSING: &str = "RevisionMissing";
    pub const CONFIGURATION_MISSING: &str = "ConfigurationMissing";
    pub const REVISION_FAILED: &str = "RevisionFailed";
    /// A revision's workload is being deployed (Knative's `ReasonDeploying`).
    pub const DEPLOYING: &str = "Deploying";
    pub const INGRESS_NOT_CONFIGURED: &str = "IngressNotConfigured";
    pub const GATEWAY_REJECTED: &str = "GatewayRejected";
}

/// One traffic target, resolved to a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedTarget {
    pub tag: Option<String>,
    pub revision: ObjectKey,
    pub percent: i64,
}

/// Why a traffic target does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrafficFailure {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

/// A traffic target naming an object that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTarget {
    /// `Revision` or `Configuration`.
    pub kind: &'static str,
    pub name: String,
}

impl MissingTarget {
    /// Knative's reason: `RevisionMissing` or `ConfigurationMissing`.
    pub fn reason(&self) -> &'static str {
        if self.kind == "Revision" { reason::REVISION_MISSING } else { reason::CONFIGURATION_MISSING }
    }

    /// Knative's message (`MarkMissingTrafficTarget`).
    pub fn message(&self) -> String {
        format!("{} {:?} referenced in traffic not found.", self.kind, self.name)
    }
}

/// The targets of `traffic` (in `namespace`) that name a revision or
/// configuration that does not exist, in order.
pub(crate) fn missing_targets(world: &World, namespace: &str, traffic: &[TrafficTarget]) -> Vec<MissingTarget> {
    traffic
        .iter()
        .filter_map(|t| match (&t.revision_name, &t.configuration_name) {
            (Some(name), _) if !world.revisions.contains_key(&ObjectKey::new(namespace, name.clone())) => {
                Some(MissingTarget { kind: "Revision", name: name.clone() })
            }
            (None, Some(name)) if !world.configurations.contains_key(&ObjectKey::new(namespace, name.clone())) => {
                Some(MissingTarget { kind: "Configuration", name: name.clone() })
            }
            _ => None,
        })
        .collect()
}

/// Resolves each of a route's targets, in order.
pub(crate) fn resolve(
    world: &World,
    namespace: &str,
    traffic: &[TrafficTarget],
    observed: &Observed,
) -> Vec<Result<ResolvedTarget, TrafficFailure>> {
    let namespace = namespace.to_string();
    let fail = |status, reason, message| Err(TrafficFailure { status, reason, message });
    traffic
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let revision = match (&t.revision_name, &t.configuration_name) {
                (Some(name), _) => {
                    let key = ObjectKey::new(namespace.clone(), name.clone());
                    if !world.revisions.contains_key(&key) {
                        let missing = MissingTarget { kind: "Revision", name: name.clone() };
                        return fail(ConditionStatus::False, missing.reason(), missing.message());
                    }
                    if !observed.is_ready(&key) {
                        return fail(
                            ConditionStatus::Unknown,
                            reason::REVISION_MISSING,
                            format!("revision {name:?} named in spec.traffic[{i}] is not ready"),
                        );
                    }
                    key
                }
                (None, Some(name)) => {
                    let key = ObjectKey::new(namespace.clone(), name.clone());
                    if !world.configurations.contains_key(&key) {
                        let missing = MissingTarget { kind: "Configuration", name: name.clone() };
                        return fail(ConditionStatus::False, missing.reason(), missing.message());
                    }
                    match world.latest_ready_revision(&key, observed) {
                        Some(r) => r.metadata.key(),
                        None => {
                            return fail(
                                ConditionStatus::Unknown,
                                reason::REVISION_MISSING,
                                format!("configuration {name:?} has no ready revision yet"),
                            );
                        }
                    }
                }
                (None, None) => {
                    return fail(
                        ConditionStatus::False,
                        reason::REVISION_MISSING,
                        format!("spec.traffic[{i}] names no revision or configuration"),
                    );
                }
            };
            Ok(ResolvedTarget { tag: t.tag.clone(), revision, percent: t.percent.unwrap_or(0) })
        })
        .collect()
}

/// The gateway serves traffic once every target that carries some resolves.
pub(crate) fn serves(resolution: &[Result<ResolvedTarget, TrafficFailure>], traffic: &[TrafficTarget]) -> bool {
    resolution.iter().zip(traffic).all(|(r, t)| r.is_ok() || t.percent.unwrap_or(0) == 0)
}

pub(crate) fn route_naming<'a>(route: &'a Route, key: &'a ObjectKey) -> RouteNaming<'a> {
    RouteNaming { key, labels: &route.metadata.labels, annotations: &route.metadata.annotations }
}

/// `Ready` from its dependent conditions: True if all are, else the first
/// False, else the first Unknown.
pub(crate) fn ready_from(type_: &str, parts: &[&Condition]) -> Condition {
    let pick = |status: ConditionStatus| parts.iter().find(|c| c.status() == status);
    match pick(ConditionStatus::False).or_else(|| pick(ConditionStatus::Unknown)) {
        None => Condition::new(type_, ConditionStatus::True, None, None),
        Some(c) => Condition { type_: type_.to_string(), ..(*c).clone() },
    }
}

fn sorted(mut conditions: Vec<Condition>) -> Vec<Condition> {
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    conditions
}

fn unknown(type_: &str, reason: &str, message: &str) -> Condition {
    Condition::new(type_, ConditionStatus::Unknown, Some(reason), Some(message.to_string()))
}

impl World {
    /// The traffic the gateway programs for a Route: its own while every
    /// target it names exists; otherwise the last traffic of it whose
    /// targets all existed (none if there never was any), as Knative's route
    /// reconciler returns before touching the ingress when a target is missing.
    pub fn traffic_in_effect<'a>(&'a self, route: &'a Route) -> Option<&'a [TrafficTarget]> {
        if missing_targets(self, &route.metadata.namespace, &route.spec.traffic).is_empty() {
            Some(&route.spec.traffic)
        } else {
            route.status.as_ref().map(|s| s.traffic.as_slice()).filter(|t| !t.is_empty())
        }
    }

    /// Keeps, for every Route whose targets all exist, its traffic as the
    /// one to go on serving should a later change name a missing target.
    /// It is kept in the stored Route's `status.traffic` — where Knative,
    /// too, leaves the last assigned traffic while a target is missing — so
    /// that it is persisted with the Route and survives a restart. (Status
    /// shown to users is always recomputed; routes stored without it serve
    /// their own traffic whenever its targets exist.) Run after every apply
    /// and delete.
    pub(crate) fn record_assigned_traffic(&mut self) {
        let assigned: Vec<ObjectKey> = self
            .routes
            .iter()
            .filter(|(key, route)| {
                route.status.as_ref().map(|s| &s.traffic) != Some(&route.spec.traffic)
                    && missing_targets(self, &key.namespace, &route.spec.traffic).is_empty()
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in assigned {
            if let Some(route) = self.routes.get_mut(&key) {
                Arc::make_mut(route).status =
                    Some(RouteStatus { traffic: route.spec.traffic.clone(), ..Default::default() });
            }
        }
    }

    /// Warnings for an apply of `docs` (already applied to `self`): every
    /// Route they wrote, directly or through a Service, whose traffic names
    /// a revision or configuration that does not exist, and what the gateway
    /// serves for it meanwhile. Shown as `kubectl` shows server warnings.
    pub fn traffic_warnings(&self, docs: &[Document]) -> Vec<String> {
        let mut warnings = Vec::new();
        for doc in docs {
            let key = doc.resource.key();
            let route_key = match &doc.resource {
                Resource::Service(_) => ObjectKey::new(key.namespace.clone(), names::service_route(&key.name)),
                Resource::Route(_) => key,
                Resource::Configuration(_) | Resource::ConfigMap(_) | Resource::DomainMapping(_) => continue,
            };
            let Some(route) = self.routes.get(&route_key) else { continue };
            let missing = missing_targets(self, &route_key.namespace, &route.spec.traffic);
            if missing.is_empty() {
                continue;
            }
            let until = if missing.len() == 1 { "Until it exists" } else { "Until they exist" };
            let serving = if self.traffic_in_effect(route).is_some() {
                "the route keeps serving its last traffic whose targets all existed"
            } else {
                "the route serves nothing"
            };
            let found: Vec<String> = missing.iter().map(MissingTarget::message).collect();
            warnings.push(format!(
                "{}/{} (namespace {}): {} {until}, {serving} (AllTrafficAssigned=False, reason {}).",
                crate::world::ROUTE_RESOURCE,
                route_key.name,
                route_key.namespace,
                found.join(" "),
                missing[0].reason(),
            ));
        }
        warnings
    }

    /// [`World::plan`], with each Route in rollout serving its rollout's
    /// split (see [`crate::rollout::served`]) instead of sending a
    /// `latestRevision` target's whole share to its newest revision.
    pub fn plan_with_rollouts(
        &self,
        observed: &Observed,
        rollouts: &crate::rollout::Rollouts,
        memo: &mut crate::planning::PlanMemo,
    ) -> GatewayPlan {
        let mut plan = self.plan_with(observed, memo);
        crate::rollout::served::overlay_plan(self, observed, &mut plan, rollouts);
        plan
    }

    /// Services as `kubectl get ksvc -o yaml` shows them.
    pub fn service_views(&self, observed: &Observed) -> Vec<Service> {
        let settings = self.settings();
        self.services
            .values()
            .map(|s| Service { status: Some(self.service_status(s, &settings, observed)), ..s.as_ref().clone() })
            .collect()
    }

    /// Configurations (including those Services own), with status.
    pub fn configuration_views(&self, observed: &Observed) -> Vec<Configuration> {
        self.configurations
            .values()
            .map(|c| Configuration { status: Some(self.configuration_status(c, observed)), ..c.as_ref().clone() })
            .collect()
    }

    /// Routes (including those Services own), with status.
    pub fn route_views(&self, observed: &Observed) -> Vec<Route> {
        let settings = self.settings();
        self.routes
            .values()
            .map(|r| Route { status: Some(self.route_status(r, &settings, observed)), ..r.as_ref().clone() })
            .collect()
    }

    /// Revisions, with status.
    pub fn revision_views(&self, observed: &Observed) -> Vec<Revision> {
        self.revisions
            .values()
            .map(|r| Revision { status: Some(revision_status(r, observed)), ..r.as_ref().clone() })
            .collect()
    }

    fn configuration_status(&self, configuration: &Configuration, observed: &Observed) -> ConfigurationStatus {
        let key = configuration.metadata.key();
        let latest_created = self.latest_created_revision(&key);
        let latest_ready = self.latest_ready_revision(&key, observed);
        let ready = match latest_created {
            None => unknown(reason::READY, reason::REVISION_MISSING, "no revision has been created yet"),
            Some(r) => match observed.readiness(&r.metadata.key()) {
                RevisionReadiness::Ready => Condition::new(reason::READY, ConditionStatus::True, None, None),
                RevisionReadiness::Deploying { message } => unknown(
                    reason::READY,
                    reason::DEPLOYING,
                    &format!("revision {:?} is not ready: {}: {message}", r.metadata.name, reason::DEPLOYING),
                ),
                // Knative's `MarkLatestCreatedFailed`: the revision's own message, in its words.
                RevisionReadiness::NotReady { message, .. } => Condition::new(
                    reason::READY,
                    ConditionStatus::False,
                    Some(reason::REVISION_FAILED),
                    Some(format!("Revision {:?} failed with message: {message}.", r.metadata.name)),
                ),
            },
        };
        ConfigurationStatus {
            observed_generation: configuration.metadata.generation,
            conditions: vec![ready],
            latest_created_revision_name: latest_created.map(|r| r.metadata.name.clone()),
            latest_ready_revision_name: latest_ready.map(|r| r.metadata.name.clone()),
        }
    }

    fn route_status(&self, route: &Route, settings: &Settings, observed: &Observed) -> RouteStatus {
        let key = route.metadata.key();
        let naming = route_naming(route, &key);
        let resolution = resolve(self, &key.namespace, &route.spec.traffic, observed);
        let failure =
            resolution.iter().filter_map(|r| r.as_ref().err()).min_by_key(|f| f.status != ConditionStatus::False);
        // What the gateway serves: the route's own traffic, or while a target
        // is missing the last traffic whose targets all existed. Ingress
        // readiness and `status.traffic` describe that, as in Knative, where
        // the ingress and the traffic status stay as they were.
        let in_effect = self.traffic_in_effect(route).unwrap_or_default();
        let effective = resolve(self, &key.namespace, in_effect, observed);
        let effective_failed = effective.iter().any(Result::is_err);
        let assigned = match failure {
            None => Condition::new(reason::ALL_TRAFFIC_ASSIGNED, ConditionStatus::True, None, None),
            Some(f) => Condition::new(reason::ALL_TRAFFIC_ASSIGNED, f.status, Some(f.reason), Some(f.message.clone())),
        };
        let not_configured = |message: &str| unknown(reason::INGRESS_READY, reason::INGRESS_NOT_CONFIGURED, message);
        let ingress = if in_effect.is_empty() || !serves(&effective, in_effect) {
            not_configured("the gateway is not programmed until all traffic is assigned")
        } else {
            match observed.ingress.get(&key) {
                Some(IngressState::Ready) => Condition::new(reason::INGRESS_READY, ConditionStatus::True, None, None),
                Some(IngressState::Rejected { message }) => Condition::new(
                    reason::INGRESS_READY,
                    ConditionStatus::False,
                    Some(reason::GATEWAY_REJECTED),
                    Some(message.clone()),
                ),
                Some(IngressState::NotConfigured) | None => not_configured("the gateway has not been programmed yet"),
            }
        };
        let traffic = if !in_effect.is_empty() && !effective_failed {
            effective
                .iter()
                .flatten()
                .zip(in_effect)
                .map(|(resolved, spec)| TrafficTarget {
                    tag: resolved.tag.clone(),
                    revision_name: Some(resolved.revision.name.clone()),
                    configuration_name: None,
                    latest_revision: spec.latest_revision,
                    percent: spec.percent,
                    url: resolved.tag.as_ref().map(|tag| names::url(&names::tag_host(naming, tag, settings))),
                })
                .collect()
        } else {
            Vec::new()
        };
        let ready = ready_from(reason::READY, &[&assigned, &ingress]);
        RouteStatus {
            observed_generation: route.metadata.generation,
            conditions: sorted(vec![assigned, ingress, ready]),
            url: Some(names::url(&names::route_host(naming, settings))),
            address: Some(Addressable { url: names::url(&names::cluster_local_host(&key)) }),
            traffic,
        }
    }

    fn service_status(&self, service: &Service, settings: &Settings, observed: &Observed) -> ServiceStatus {
        let key = service.metadata.key();
        let config_key = ObjectKey::new(key.namespace.clone(), names::service_configuration(&key.name));
        let route_key = ObjectKey::new(key.namespace.clone(), names::service_route(&key.name));
        let config = self.configurations.get(&config_key).map(|c| self.configuration_status(c, observed));
        let route = self.routes.get(&route_key).map(|r| self.route_status(r, settings, observed));
        let mirror = |type_: &str, conditions: Option<&Vec<Condition>>| {
            conditions
                .and_then(|cs| crate::meta::condition(cs, reason::READY))
                .map(|c| Condition { type_: type_.to_string(), ..c.clone() })
                .unwrap_or_else(|| unknown(type_, "Creating", "the child object does not exist yet"))
        };
        let configurations_ready = mirror(reason::CONFIGURATIONS_READY, config.as_ref().map(|c| &c.conditions));
        let routes_ready = mirror(reason::ROUTES_READY, route.as_ref().map(|r| &r.conditions));
        let ready = ready_from(reason::READY, &[&configurations_ready, &routes_ready]);
        let (config, route) = (config.unwrap_or_default(), route.unwrap_or_default());
        ServiceStatus {
            observed_generation: service.metadata.generation,
            conditions: sorted(vec![configurations_ready, routes_ready, ready]),
            url: route.url,
            address: route.address,
            latest_created_revision_name: config.latest_created_revision_name,
            latest_ready_revision_name: config.latest_ready_revision_name,
            traffic: route.traffic,
        }
    }
}

fn revision_status(revision: &Revision, observed: &Observed) -> RevisionStatus {
    let conditions = match observed.readiness(&revision.metadata.key()) {
        RevisionReadiness::Ready => [reason::CONTAINER_HEALTHY, reason::READY, reason::RESOURCES_AVAILABLE]
            .iter()
            .map(|t| Condition::new(t, ConditionStatus::True, None, None))
            .collect(),
        RevisionReadiness::Deploying { message } => {
            [reason::CONTAINER_HEALTHY, reason::READY, reason::RESOURCES_AVAILABLE]
                .iter()
                .map(|t| unknown(t, reason::DEPLOYING, message))
                .collect()
        }
        RevisionReadiness::NotReady { reason: why, message } => {
            let not_ready = |t| Condition::new(t, ConditionStatus::False, Some(why), Some(message.clone()));
            vec![
                not_ready(reason::CONTAINER_HEALTHY),
                not_ready(reason::READY),
                unknown(reason::RESOURCES_AVAILABLE, why, message),
            ]
        }
    };
    RevisionStatus { observed_generation: revision.metadata.generation, conditions }
}
