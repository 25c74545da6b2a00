//! A DomainMapping's VirtualService, as net-istio writes it for the
//! Ingress Knative's DomainMapping reconciler makes (`MakeIngress`): one
//! external rule for the domain, whose only path rewrites the host to the
//! referenced Route's address and sends everything to the Route's own
//! Service (`<route>.<namespace>.svc.cluster.local`, port 80, the
//! ExternalName to the local gateway that [`crate::service`] writes), with
//! `K-Original-Host: <domain>` added. The local gateway then routes the
//! rewritten host through the Route's own VirtualService, so the mapping
//! follows the Route's split, tags and rollout without copying them.
//!
//! Only external: the domain is the user's, and net-istio writes no `-mesh`
//! VirtualService for an Ingress without in-cluster hosts. Mappings come
//! from the gateway plan (each Route's `mappings`: the claimed ones whose
//! reference resolves), so render and the controller write the same.

use std::collections::BTreeMap;

use revgate_model::World;
use revgate_model::plan::{GatewayPlan, MappedHost, ObjectKey, RoutePlan};

use crate::meta::ObjectMeta;
use crate::names;
use crate::options::RenderOptions;
use crate::virtual_service::{
    API_VERSION, Destination, EXCLUDED_ANNOTATIONS, HTTP1_PORT, Headers, HttpMatch, HttpRetry, HttpRewrite, HttpRoute,
    INGRESS_CLASS_ANNOTATION, INGRESS_LABEL, ISTIO_INGRESS_CLASS, KIND, PortSelector, RouteDestination, StringMatch,
    VirtualService, VirtualServiceSpec,
};

/// Header carrying the mapped domain to the backend (Knative's `K-Original-Host`).
pub const ORIGINAL_HOST_HEADER: &str = "K-Original-Host";
/// Label Knative puts on a mapping's Ingress: the mapping's namespace.
pub const DOMAIN_MAPPING_NAMESPACE_LABEL: &str = "serving.knative.dev/domainMappingNamespace";

/// The VirtualService of every mapped domain in the plan, sorted by
/// namespace and domain.
pub fn virtual_services(world: &World, plan: &GatewayPlan, options: &RenderOptions) -> Vec<VirtualService> {
    let mut out: Vec<VirtualService> = plan
        .routes
        .iter()
        .flat_map(|route| route.mappings.iter().map(move |mapped| (route, mapped)))
        .map(|(route, mapped)| virtual_service(world, route, mapped, options))
        .collect();
    out.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    out
}

fn virtual_service(world: &World, route: &RoutePlan, mapped: &MappedHost, options: &RenderOptions) -> VirtualService {
    let namespace = &route.key.namespace;
    let mapping = world.domain_mappings.get(&ObjectKey::new(namespace.clone(), mapped.host.clone()));
    // The Ingress is named after the mapping (`kmeta.ChildName(dm.Name, "")`).
    let ingress = names::child_name(&mapped.host, "");
    let mut labels = mapping.map(|m| m.metadata.labels.clone()).unwrap_or_default();
    labels.insert(DOMAIN_MAPPING_NAMESPACE_LABEL.to_string(), namespace.clone());
    labels.insert(INGRESS_LABEL.to_string(), ingress.clone());
    let mut annotations = BTreeMap::from([(INGRESS_CLASS_ANNOTATION.to_string(), ISTIO_INGRESS_CLASS.to_string())]);
    if let Some(mapping) = mapping {
        annotations.extend(
            mapping
                .metadata
                .annotations
                .iter()
                .filter(|(k, _)| !EXCLUDED_ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let gateways = vec![options.ingress_gateway.clone()];
    let http = HttpRoute {
        matches: vec![HttpMatch {
            authority: StringMatch::prefix(mapped.host.clone()),
            gateways: gateways.clone(),
            headers: BTreeMap::new(),
        }],
        rewrite: Some(HttpRewrite { authority: mapped.rewrite_host.clone() }),
        route: vec![RouteDestination {
            destination: Destination {
                host: names::service_host(&route.key.name, namespace),
                port: PortSelector { number: HTTP1_PORT },
            },
            weight: 100,
            headers: Headers::set(&BTreeMap::from([(ORIGINAL_HOST_HEADER.to_string(), mapped.host.clone())])),
        }],
        headers: None,
        retries: HttpRetry {},
    };
    VirtualService {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name: names::ingress_virtual_service(&ingress),
            namespace: namespace.clone(),
            labels,
            annotations,
            owner_references: Vec::new(),
        },
        spec: VirtualServiceSpec { gateways, hosts: vec![mapped.host.clone()], http: vec![http] },
    }
}
