//! Routes as Istio VirtualServices, in the shape net-istio gives them.
//!
//! Knative does this in two steps, and so does this module: the Route
//! reconciler turns a route's traffic into networking *rules* (serving
//! `resources/ingress.go`, here `ingress_rules`), and net-istio turns the
//! rules into at most two VirtualServices (`virtual_service.go`, here
//! `virtual_services_for_route`). Keeping the steps apart keeps each one
//! checkable against its Go counterpart.
//!
//! # Rules
//!
//! One *target* for the route's default traffic and one per tag, default
//! first, then tags sorted. Each target gets:
//!
//! | visibility | hosts | gateway |
//! |---|---|---|
//! | cluster-local | `t.ns`, `t.ns.svc`, `t.ns.svc.cluster.local` | the local gateway, and `mesh` |
//! | external (unless the route is cluster-local) | `t.ns.<domain>`, one rule per host | the ingress gateway |
//!
//! A rule has one path that splits by percent, each split going to
//! `<revision>.<ns>.svc.cluster.local` on port 80 (81 for h2c revisions) and
//! setting `Knative-Serving-Revision` and `Knative-Serving-Namespace`. A tag's
//! rules send 100% to the tagged revision.
//!
//! With `tag-header-based-routing` enabled, every default rule first gets one
//! path per tag matching `Knative-Serving-Tag: <tag>`, and its own path sets
//! `Knative-Serving-Default-Route: true`; every tag rule sets
//! `Knative-Serving-Tag: <tag>`.
//!
//! # VirtualServices
//!
//! - `<route>-mesh`: the in-cluster hosts, `gateways: [mesh]`, the rules
//!   that have such hosts. Absent when the route has none.
//! - `<route>-ingress`: every host, bound to the gateways its matches use.
//!
//! Every (rule, path) becomes one `http` entry, whose matches are the
//! distinct authority *prefixes* of the rule's hosts (so `host:port` matches
//! too), with `retries: {}`: Istio retries failed requests twice by default,
//! and Knative does not retry. No `timeout`, as in net-istio, and on
//! purpose: a VirtualService's `timeout` is Envoy's route timeout, which runs
//! until the response *ends*, so it would cut a WebSocket or a gRPC stream
//! that Knative lets run, and one `http` entry has one timeout however its
//! split's revisions differ; its `retries.perTryTimeout` comes only with
//! retry attempts, which Knative does not make. Knative
//! enforces `timeoutSeconds`, `responseStartTimeoutSeconds` and
//! `idleTimeoutSeconds` in the queue-proxy; revgate's pods have none, so
//! revgate's gateway filter enforces all three per revision in the Istio
//! gateway (the WasmPlugin), from the readiness view the control plane
//! sends it, with the same 504s and `x-revgate-reason` as revgate's own
//! Envoy. WebSocket upgrades need nothing here: Istio's gateways accept them.
//!
//! Left out on purpose: net-istio's `K-Network-Hash` probe copies of every
//! entry (they only serve net-istio's own gateway prober), and the
//! `networking.internal.knative.dev/rollout` and `…/tag-to-host` annotations
//! (Knative's bookkeeping for gradual rollouts and domain claims, which
//! nothing on the Istio side reads).

use std::collections::{BTreeMap, BTreeSet};

use revgate_model::meta::LAST_APPLIED_ANNOTATION;
use revgate_model::names::RouteNaming;
use revgate_model::plan::{GatewayPlan, ObjectKey, RoutePlan, UpstreamProtocol};
use revgate_model::{Settings, World};
use serde::Serialize;

use crate::meta::{ObjectMeta, OwnerKind};
use crate::names;
use crate::options::RenderOptions;

pub const API_VERSION: &str = "networking.istio.io/v1beta1";
pub const KIND: &str = "VirtualService";

/// Label naming the (Knative networking) Ingress a VirtualService implements.
pub const INGRESS_LABEL: &str = "networking.internal.knative.dev/ingress";
/// Label naming the route.
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";
/// Label naming the route's namespace.
pub const ROUTE_NAMESPACE_LABEL: &str = "serving.knative.dev/routeNamespace";
/// Annotation selecting the networking layer that serves a route.
pub const INGRESS_CLASS_ANNOTATION: &str = "networking.knative.dev/ingress.class";
/// net-istio's ingress class.
pub const ISTIO_INGRESS_CLASS: &str = "istio.ingress.networking.knative.dev";
/// Route annotations Knative does not copy to its networking objects: the
/// `kubectl apply` record, and the camelCase spellings of two class keys.
pub const EXCLUDED_ANNOTATIONS: [&str; 3] =
    [LAST_APPLIED_ANNOTATION, "networking.knative.dev/certificateClass", "networking.knative.dev/ingressClass"];

/// Set on requests (to the activator, in Knative) to name the revision.
pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
/// Set on requests to name the revision's namespace.
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";
/// Request header choosing a tag on the route's main host.
pub const TAG_HEADER: &str = "Knative-Serving-Tag";
/// Set on requests that took the default route although tag headers are on.
pub const DEFAULT_ROUTE_HEADER: &str = "Knative-Serving-Default-Route";

/// Service port of a revision for HTTP/1 (`networking.ServiceHTTPPort`).
pub const HTTP1_PORT: u16 = 80;
/// Service port of a revision for h2c (`networking.ServiceHTTP2Port`).
pub const H2C_PORT: u16 = 81;

/// The Service port that carries a protocol, as Knative numbers them.
pub fn service_port(protocol: UpstreamProtocol) -> u16 {
    match protocol {
        UpstreamProtocol::Http1 => HTTP1_PORT,
        UpstreamProtocol::H2c => H2C_PORT,
    }
}

// ----- the object ----------------------------------------------------------------

/// `networking.istio.io/v1beta1` VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VirtualServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualServiceSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    pub hosts: Vec<String>,
    pub http: Vec<HttpRoute>,
}

/// One `http` entry: where requests that match go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Set only where Knative's Ingress path has `RewriteHost` (a
    /// DomainMapping's domain, see [`crate::domain_mapping`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    pub route: Vec<RouteDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Always present and empty: zero retries.
    pub retries: HttpRetry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpMatch {
    pub authority: StringMatch,
    pub gateways: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// `rewrite: {authority: …}`: the host the request continues with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRewrite {
    pub authority: String,
}

/// Istio's `StringMatch`: `{prefix: …}` or `{exact: …}`, one of them set.
///
/// A struct rather than an enum: serde writes enums as YAML tags
/// (`!prefix hello.default`), which Kubernetes does not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

impl StringMatch {
    pub fn prefix(value: impl Into<String>) -> Self {
        Self { prefix: Some(value.into()), exact: None }
    }

    pub fn exact(value: impl Into<String>) -> Self {
        Self { prefix: None, exact: Some(value.into()) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub host: String,
    pub port: PortSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Headers {
    pub request: HeaderOperations,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
}

/// `retries: {}`: no retry attempts (Istio's default is 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpRetry {}

impl Headers {
    /// `None` when there is nothing to set, as net-istio leaves the field out.
    pub(crate) fn set(values: &BTreeMap<String, String>) -> Option<Self> {
        (!values.is_empty()).then(|| Headers { request: HeaderOperations { set: values.clone() } })
    }
}

// ----- step 1: Knative's rules ---------------------------------------------------------

/// Who can reach a rule's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    ClusterLocal,
    External,
}

/// One networking rule: hosts, who may reach them, and their paths.
#[derive(Debug, Clone)]
struct Rule {
    hosts: BTreeSet<String>,
    visibility: Visibility,
    paths: Vec<Path>,
}

/// One path of a rule (revgate routes whole hosts, so paths differ only by
/// the tag header they match).
#[derive(Debug, Clone)]
struct Path {
    /// `Knative-Serving-Tag` value this path requires.
    tag_header: Option<String>,
    /// Request headers the path sets.
    append_headers: BTreeMap<String, String>,
    splits: Vec<Backend>,
}

/// A share of a path's traffic.
#[derive(Debug, Clone)]
struct Backend {
    revision: ObjectKey,
    port: u16,
    percent: u32,
}

impl Backend {
    fn destination(&self) -> RouteDestination {
        let headers = BTreeMap::from([
            (REVISION_HEADER.to_string(), self.revision.name.clone()),
            (NAMESPACE_HEADER.to_string(), self.revision.namespace.clone()),
        ]);
        RouteDestination {
            destination: Destination {
                host: names::revision_host(&self.revision),
                port: PortSelector { number: self.port },
            },
            weight: self.percent,
            headers: Headers::set(&headers),
        }
    }
}

/// A traffic target: the default traffic (`tag: None`) or one tag.
struct Target {
    tag: Option<String>,
    /// The host the plan gives it (external, or in-cluster for cluster-local routes).
    host: String,
    splits: Vec<Backend>,
}

/// What a route's rules are computed from besides its plan.
struct RouteContext<'a> {
    plan: &'a GatewayPlan,
    settings: &'a Settings,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
}

/// A route's networking rules, as Knative's route reconciler writes them
/// into its Ingress (`makeIngressSpec`).
fn ingress_rules(route: &RoutePlan, ctx: &RouteContext<'_>) -> Vec<Rule> {
    let port_of = |revision: &ObjectKey| {
        let protocol = ctx.plan.revisions.iter().find(|r| &r.key == revision).map(|r| r.protocol).unwrap_or_default();
        service_port(protocol)
    };
    let backend =
        |revision: &ObjectKey, percent: u32| Backend { revision: revision.clone(), port: port_of(revision), percent };

    let mut targets = vec![Target {
        tag: None,
        host: route.host.clone(),
        splits: route.splits.iter().map(|s| backend(&s.revision, s.percent)).collect(),
    }];
    // The plan sorts tags, as Knative sorts its target names.
    targets.extend(route.tags.iter().map(|t| Target {
        tag: Some(t.tag.clone()),
        host: t.host.clone(),
        splits: vec![backend(&t.revision, 100)],
    }));

    // The route is cluster-local when its host is (a visibility label, or no
    // config-domain entry selecting it); then so are its tags, as in Knative.
    let cluster_local = names::is_local_host(&route.host);
    let mut rules = Vec::new();
    for target in &targets {
        let mut target_rules = vec![Rule {
            hosts: names::expanded_hosts(&[local_host(route, target, ctx)]),
            visibility: Visibility::ClusterLocal,
            paths: vec![base_path(target)],
        }];
        if !cluster_local {
            target_rules.push(Rule {
                hosts: BTreeSet::from([target.host.clone()]),
                visibility: Visibility::External,
                paths: vec![base_path(target)],
            });
        }
        if ctx.plan.tag_header_routing {
            for rule in &mut target_rules {
                add_tag_header_routing(rule, target, &targets);
            }
        }
        rules.extend(target_rules);
    }
    rules
}

/// The in-cluster host of a target.
fn local_host(route: &RoutePlan, target: &Target, ctx: &RouteContext<'_>) -> String {
    let naming = RouteNaming { key: &route.key, labels: ctx.labels, annotations: ctx.annotations };
    names::target_local_host(naming, target.tag.as_deref(), ctx.settings)
}

/// A target's own path: its splits, percent > 0 only.
fn base_path(target: &Target) -> Path {
    Path {
        tag_header: None,
        append_headers: BTreeMap::new(),
        splits: target.splits.iter().filter(|s| s.percent > 0).cloned().collect(),
    }
}

/// `tag-header-based-routing`: the default rule learns every tag's header,
/// and a tag rule says which tag it served.
fn add_tag_header_routing(rule: &mut Rule, target: &Target, targets: &[Target]) {
    match &target.tag {
        None => {
            if let Some(own) = rule.paths.first_mut() {
                own.append_headers.insert(DEFAULT_ROUTE_HEADER.to_string(), "true".to_string());
            }
            let tag_paths = targets
                .iter()
                .filter_map(|t| t.tag.as_ref().map(|tag| Path { tag_header: Some(tag.clone()), ..base_path(t) }));
            rule.paths.splice(0..0, tag_paths.collect::<Vec<_>>());
        }
        Some(tag) => {
            if let Some(own) = rule.paths.first_mut() {
                own.append_headers.insert(TAG_HEADER.to_string(), tag.clone());
            }
        }
    }
}

// ----- step 2: net-istio's VirtualServices ----------------------------------------------

/// The VirtualServices of every route in the plan: per route, `-mesh`
/// (if the route has in-cluster hosts) then `-ingress`. The world supplies
/// each route's metadata and the settings its hosts were computed with.
pub fn virtual_services(world: &World, plan: &GatewayPlan, options: &RenderOptions) -> Vec<VirtualService> {
    let settings = world.settings();
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for route in &plan.routes {
        let metadata = world.routes.get(&route.key).map(|r| &r.metadata);
        let ctx = RouteContext {
            plan,
            settings: &settings,
            labels: metadata.map_or(&empty, |m| &m.labels),
            annotations: metadata.map_or(&empty, |m| &m.annotations),
        };
        out.extend(virtual_services_for_route(route, &ctx, options));
    }
    out
}

fn virtual_services_for_route(
    route: &RoutePlan,
    ctx: &RouteContext<'_>,
    options: &RenderOptions,
) -> Vec<VirtualService> {
    let rules = ingress_rules(route, ctx);
    let mut out = Vec::new();

    // Sidecars: only the in-cluster hosts. They are spelled every way when a
    // local gateway exists, as net-istio does (knative/serving#6488).
    let mut mesh_hosts: BTreeSet<String> =
        rules.iter().flat_map(|r| &r.hosts).filter(|h| names::is_local_host(h)).cloned().collect();
    if options.local_gateway.is_some() {
        mesh_hosts = names::expanded_hosts(&mesh_hosts);
    }
    if !mesh_hosts.is_empty() {
        let mesh = vec![names::MESH_GATEWAY.to_string()];
        let spec = spec(&rules, &mesh_hosts, |_| Some(mesh.clone()));
        out.push(virtual_service(names::mesh_virtual_service(&route.key.name), route, ctx, options, spec));
    }

    // Gateways. Without a local gateway net-istio would still add the
    // cluster-local rules, with no gateway on their matches, which Istio
    // reads as "every gateway of this VirtualService": in-cluster hosts
    // would then answer on the public gateway. revgate leaves them out.
    let gateway_for = |visibility| match visibility {
        Visibility::External => Some(vec![options.ingress_gateway.clone()]),
        Visibility::ClusterLocal => options.local_gateway.as_ref().map(|g| vec![g.gateway.clone()]),
    };
    let gateway_rules: Vec<Rule> = rules.iter().filter(|r| gateway_for(r.visibility).is_some()).cloned().collect();
    if !gateway_rules.is_empty() {
        let hosts = names::expanded_hosts(gateway_rules.iter().flat_map(|r| &r.hosts));
        let spec = spec(&gateway_rules, &hosts, gateway_for);
        out.push(virtual_service(names::ingress_virtual_service(&route.key.name), route, ctx, options, spec));
    }
    out
}

/// net-istio's `makeVirtualServiceSpec`: one entry per (rule, path) whose
/// hosts meet the VirtualService's, gateways the union of the matches'.
fn spec(
    rules: &[Rule],
    hosts: &BTreeSet<String>,
    gateways: impl Fn(Visibility) -> Option<Vec<String>>,
) -> VirtualServiceSpec {
    let mut http = Vec::new();
    let mut all_gateways = BTreeSet::new();
    for rule in rules {
        let rule_hosts: BTreeSet<String> = hosts.intersection(&rule.hosts).cloned().collect();
        if rule_hosts.is_empty() {
            continue;
        }
        let match_gateways = gateways(rule.visibility).unwrap_or_default();
        all_gateways.extend(match_gateways.iter().cloned());
        for path in &rule.paths {
            let matches = names::distinct_host_prefixes(&rule_hosts)
                .into_iter()
                .map(|prefix| HttpMatch {
                    authority: StringMatch::prefix(prefix),
                    gateways: match_gateways.clone(),
                    headers: path
                        .tag_header
                        .iter()
                        .map(|tag| (TAG_HEADER.to_string(), StringMatch::exact(tag.clone())))
                        .collect(),
                })
                .collect();
            http.push(HttpRoute {
                matches,
                rewrite: None,
                route: path.splits.iter().map(Backend::destination).collect(),
                headers: Headers::set(&path.append_headers),
                retries: HttpRetry {},
            });
        }
    }
    VirtualServiceSpec { gateways: all_gateways.into_iter().collect(), hosts: hosts.iter().cloned().collect(), http }
}

fn virtual_service(
    name: String,
    route: &RoutePlan,
    ctx: &RouteContext<'_>,
    options: &RenderOptions,
    spec: VirtualServiceSpec,
) -> VirtualService {
    let key = &route.key;
    let labels = BTreeMap::from([
        (INGRESS_LABEL.to_string(), key.name.clone()),
        (ROUTE_LABEL.to_string(), key.name.clone()),
        (ROUTE_NAMESPACE_LABEL.to_string(), key.namespace.clone()),
    ]);
    // The route's own annotations win, as in Knative (a route may name another ingress class).
    let mut annotations = BTreeMap::from([(INGRESS_CLASS_ANNOTATION.to_string(), ISTIO_INGRESS_CLASS.to_string())]);
    annotations.extend(
        ctx.annotations
            .iter()
            .filter(|(k, _)| !EXCLUDED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    VirtualService {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name,
            namespace: key.namespace.clone(),
            labels,
            annotations,
            owner_references: options.owner_uids.controller_ref(OwnerKind::Route, key).into_iter().collect(),
        },
        spec,
    }
}
