//! Kubernetes Services: one per revision, which the VirtualServices route
//! to, and one per route host, which makes the route's in-cluster names
//! resolve.
//!
//! # Revision Services
//!
//! The destination net-istio's VirtualServices name
//! (`<revision>.<namespace>.svc.cluster.local`).
//!
//! Knative's Service of that name has no selector: its endpoints are the
//! activator's or the queue-proxies', swapped by the serverless-service
//! reconciler. revgate needs no swapping, because the filter in the gateway
//! holds requests while a revision has no pods. So this is a plain ClusterIP
//! Service selecting the revision's pods, and Istio's endpoint discovery
//! does the rest: at zero pods the cluster
//! `outbound|80||<revision>.<namespace>.svc.cluster.local` is empty, and the
//! filter, which reads that cluster name, holds the request and asks for an
//! activation.
//!
//! The port keeps Knative's numbering, so VirtualServices written by
//! net-istio and by revgate agree: `http` on 80 for HTTP/1, `http2` on 81
//! (with `appProtocol: kubernetes.io/h2c`) for h2c revisions, so that Istio
//! speaks HTTP/2 to the pods. Either goes straight to the user port.
//!
//! # Route Services
//!
//! As Knative's route reconciler writes them: for the route and for each
//! tag, a Service named like the host (`hello`, `canary-hello`) so that
//! `hello.default.svc.cluster.local` resolves in the cluster. It points at
//! the local gateway's Service (ExternalName), so clients without a sidecar
//! go through the gateway, and its filter, like public traffic; clients with
//! a sidecar are routed by the `-mesh` VirtualService instead. Without a
//! local gateway it is a ClusterIP Service with no pods, which only gives
//! sidecars an address to intercept.

use std::collections::BTreeMap;

use revgate_model::World;
use revgate_model::meta::VISIBILITY_LABEL;
use revgate_model::names::RouteNaming;
use revgate_model::plan::{GatewayPlan, UpstreamProtocol};
use revgate_model::resources::Revision;
use serde::Serialize;

use crate::meta::{ObjectMeta, OwnerKind};
use crate::options::RenderOptions;
use crate::virtual_service::{HTTP1_PORT, ROUTE_LABEL, service_port};
use crate::{names, revision};

pub const API_VERSION: &str = "v1";
pub const KIND: &str = "Service";

/// Port name Istio reads as HTTP/1 (`networking.ServicePortNameHTTP1`).
pub const HTTP1_PORT_NAME: &str = "http";
/// Port name Istio reads as HTTP/2 (`networking.ServicePortNameH2C`).
pub const H2C_PORT_NAME: &str = "http2";
/// Kubernetes' application protocol for HTTP/2 over cleartext.
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// `v1` Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: u16,
    pub target_port: u16,
}

/// The Service in front of one revision's pods.
pub fn revision_service(revision: &Revision, options: &RenderOptions) -> Service {
    let meta = &revision.metadata;
    let protocol = revision::protocol(&revision.spec);
    let (name, app_protocol) = match protocol {
        UpstreamProtocol::Http1 => (HTTP1_PORT_NAME, None),
        UpstreamProtocol::H2c => (H2C_PORT_NAME, Some(H2C_APP_PROTOCOL.to_string())),
    };
    Service {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name: names::revision_service(&meta.name),
            namespace: meta.namespace.clone(),
            labels: revision::labels(revision, &options.owner_uids),
            annotations: BTreeMap::new(),
            owner_references: options.owner_uids.controller_ref(OwnerKind::Revision, &meta.key()).into_iter().collect(),
        },
        spec: ServiceSpec {
            type_: "ClusterIP".to_string(),
            external_name: None,
            session_affinity: None,
            selector: revision::selector(revision),
            ports: vec![ServicePort {
                name: name.to_string(),
                protocol: "TCP".to_string(),
                app_protocol,
                port: service_port(protocol),
                target_port: revision::user_port(&revision.spec),
            }],
        },
    }
}

/// The Services of every route in the plan: the route's, then one per tag.
pub fn route_services(world: &World, plan: &GatewayPlan, options: &RenderOptions) -> Vec<Service> {
    let settings = world.settings();
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for route in &plan.routes {
        let key = &route.key;
        let meta = world.routes.get(key).map(|r| &r.metadata);
        let (labels, annotations) = meta.map_or((&empty, &empty), |m| (&m.labels, &m.annotations));
        let naming = RouteNaming { key, labels, annotations };
        // The visibility label stays on the route: Knative reads it from the
        // route's Services too, per tag, so copying it would pin every tag.
        let mut service_labels: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| k.as_str() != VISIBILITY_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        service_labels.insert(ROUTE_LABEL.to_string(), key.name.clone());
        let tags = std::iter::once(None).chain(route.tags.iter().map(|t| Some(t.tag.as_str())));
        for tag in tags {
            out.push(Service {
                api_version: API_VERSION.to_string(),
                kind: KIND.to_string(),
                metadata: ObjectMeta {
                    name: names::route_service(naming, tag, &settings),
                    namespace: key.namespace.clone(),
                    labels: service_labels.clone(),
                    annotations: annotations.clone(),
                    owner_references: options.owner_uids.controller_ref(OwnerKind::Route, key).into_iter().collect(),
                },
                spec: route_service_spec(options),
            });
        }
    }
    out
}

/// net-istio reports the local gateway's Service as the route's in-cluster
/// address, or "mesh only" when there is none; Knative's route Service
/// follows that report.
fn route_service_spec(options: &RenderOptions) -> ServiceSpec {
    match &options.local_gateway {
        Some(local) => ServiceSpec {
            type_: "ExternalName".to_string(),
            external_name: Some(local.service.clone()),
            session_affinity: Some("None".to_string()),
            selector: BTreeMap::new(),
            ports: vec![ServicePort {
                name: H2C_PORT_NAME.to_string(),
                protocol: "TCP".to_string(),
                app_protocol: Some(H2C_APP_PROTOCOL.to_string()),
                port: HTTP1_PORT,
                target_port: HTTP1_PORT,
            }],
        },
        None => ServiceSpec {
            type_: "ClusterIP".to_string(),
            external_name: None,
            session_affinity: None,
            selector: BTreeMap::new(),
            ports: vec![ServicePort {
                name: HTTP1_PORT_NAME.to_string(),
                protocol: "TCP".to_string(),
                app_protocol: None,
                port: HTTP1_PORT,
                target_port: HTTP1_PORT,
            }],
        },
    }
}
