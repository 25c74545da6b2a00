//! Activation for calls from inside the mesh: while a revision is at zero,
//! its share of a route's `-mesh` VirtualService goes to the cluster-local
//! gateway, which carries revgate's filter; once it is warm, straight to
//! its own Service again.
//!
//! A sidecar applies the `-mesh` VirtualService itself and calls the
//! revision's Service directly, so no gateway sees the call. Knative covers
//! this case by pointing the revision's public Service at its activator
//! while the revision is at zero (the ServerlessService's `Proxy` mode).
//! revgate has no activator. Instead the controller rewrites the `-mesh`
//! destinations of cold revisions:
//!
//! | revision | `-mesh` destination | who holds a call |
//! |---|---|---|
//! | warm (ready endpoints, not being taken to zero) | `<revision>.<ns>.svc.cluster.local:80` (net-istio's) | nobody: sidecar to pod |
//! | at zero, activating, or being taken to zero | `<local gateway Service>:80`, same weight and headers | the filter in the local gateway |
//!
//! The sidecar keeps the request's authority (`hello.default…`), so the
//! local gateway routes it with the `-ingress` VirtualService's
//! cluster-local rule to `outbound|80||<revision>.<ns>.svc.cluster.local`,
//! the cluster name the filter reads the revision from; the filter holds
//! the call, asks for the activation and releases it once its probe through
//! that cluster reaches a pod. A route whose split has several revisions is
//! split again at the gateway: a cold revision's share may land on a warm
//! one there, which answers it (one hop more, never a failure).
//!
//! Warm traffic never takes the extra hop. Which revisions are cold, and
//! when the switch may happen, is the controller's business
//! (`revgate-kube`'s `mesh` module); this module only rewrites objects.

use std::collections::BTreeSet;

use revgate_model::plan::ObjectKey;

use crate::names;
use crate::options::RenderOptions;
use crate::render::Object;
use crate::virtual_service::VirtualService;

/// The local gateway Service's port (net-istio's `knative-local-gateway`
/// Service: 80, to the gateway pods' 8081).
pub const LOCAL_GATEWAY_PORT: u16 = 80;

/// Whether a VirtualService programs sidecars (`gateways: [mesh]`).
pub fn is_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.iter().any(|g| g == names::MESH_GATEWAY)
}

/// Points the destinations of `cold` revisions in a `-mesh`
/// VirtualService at the local gateway Service. Other VirtualServices,
/// and every VirtualService when there is no local gateway, are left as
/// they are (the ingress gateways are where the filter runs). Returns
/// whether anything changed.
pub fn route_through_local_gateway(
    vs: &mut VirtualService,
    cold: &BTreeSet<ObjectKey>,
    options: &RenderOptions,
) -> bool {
    let Some(gateway) = options.local_gateway.as_ref() else { return false };
    if !is_mesh(vs) {
        return false;
    }
    let mut changed = false;
    for destination in vs.spec.http.iter_mut().flat_map(|h| h.route.iter_mut()).map(|r| &mut r.destination) {
        let Some(revision) = revision_of_host(&destination.host) else { continue };
        if cold.contains(&revision) {
            destination.host.clone_from(&gateway.service);
            destination.port.number = LOCAL_GATEWAY_PORT;
            changed = true;
        }
    }
    changed
}

/// Every `-mesh` VirtualService among `objects` as the controller writes
/// it while every revision is at zero: all in-mesh calls through the local
/// gateway (`revgate render istio --at-zero`).
pub fn all_through_local_gateway(objects: &mut [Object], options: &RenderOptions) {
    let mut revisions = BTreeSet::new();
    for object in objects.iter() {
        if let Object::VirtualService(vs) = object {
            revisions.extend(routed_revisions(vs));
        }
    }
    for object in objects.iter_mut() {
        if let Object::VirtualService(vs) = object {
            route_through_local_gateway(vs, &revisions, options);
        }
    }
}

/// The revisions a VirtualService routes to directly (by their Service
/// host), in order.
pub fn routed_revisions(vs: &VirtualService) -> BTreeSet<ObjectKey> {
    vs.spec.http.iter().flat_map(|h| &h.route).filter_map(|r| revision_of_host(&r.destination.host)).collect()
}

/// The revision behind a destination host `<revision>.<ns>.svc.cluster.local`
/// ([`names::revision_host`] read back). `None` for other hosts.
pub fn revision_of_host(host: &str) -> Option<ObjectKey> {
    let (name, namespace) = host.strip_suffix(&names::local_host_suffix())?.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then(|| ObjectKey::new(namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use revgate_model::{Observed, World};

    use super::*;
    use crate::options::LocalGateway;
    use crate::virtual_service::virtual_services;

    const SPLIT: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Configuration
metadata: {name: hello, namespace: default}
spec:
  template:
    metadata: {name: hello-00001}
    spec: {containers: [{image: example.com/hello}]}
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: hello, namespace: default}
spec:
  traffic:
  - {revisionName: hello-00001, percent: 100}
"#;

    fn world() -> World {
        let documents = revgate_model::parse_documents("split.yaml", SPLIT).expect("manifest parses");
        World::default().apply(&documents, 0).expect("manifest applies").0
    }

    fn rendered(options: &RenderOptions) -> Vec<VirtualService> {
        let world = world();
        virtual_services(&world, &world.plan(&Observed::default()), options)
    }

    fn hosts(vs: &VirtualService) -> Vec<(String, u16)> {
        vs.spec
            .http
            .iter()
            .flat_map(|h| &h.route)
            .map(|r| (r.destination.host.clone(), r.destination.port.number))
            .collect()
    }

    #[test]
    fn a_cold_revision_is_reached_through_the_local_gateway_from_the_mesh_only() {
        let options = RenderOptions::default();
        let cold = BTreeSet::from([ObjectKey::new("default", "hello-00001")]);
        let mut vss = rendered(&options);
        let changed: Vec<bool> = vss.iter_mut().map(|vs| route_through_local_gateway(vs, &cold, &options)).collect();
        assert_eq!(changed, [true, false], "only hello-mesh changes: {vss:#?}");
        assert_eq!(hosts(&vss[0]), [("knative-local-gateway.istio-system.svc.cluster.local".to_string(), 80)]);
        let headers = vss[0].spec.http[0].route[0].headers.as_ref().expect("headers kept");
        assert_eq!(headers.request.set["Knative-Serving-Revision"], "hello-00001");
        assert!(hosts(&vss[1]).iter().all(|(h, _)| h == "hello-00001.default.svc.cluster.local"));
    }

    #[test]
    fn warm_revisions_and_meshes_without_a_local_gateway_stay_direct() {
        let options = RenderOptions::default();
        let mut vss = rendered(&options);
        let before = vss.clone();
        let warm = BTreeSet::from([ObjectKey::new("default", "hello-00002")]);
        assert!(!vss.iter_mut().any(|vs| route_through_local_gateway(vs, &warm, &options)));
        assert_eq!(vss, before);

        let none = RenderOptions { local_gateway: None, ..RenderOptions::default() };
        let mut vss = rendered(&none);
        let cold = BTreeSet::from([ObjectKey::new("default", "hello-00001")]);
        assert!(!vss.iter_mut().any(|vs| route_through_local_gateway(vs, &cold, &none)));
    }

    #[test]
    fn a_custom_local_gateway_service_is_used() {
        let options = RenderOptions {
            local_gateway: Some(LocalGateway {
                gateway: "mesh-edge/local".into(),
                service: "local.mesh-edge.svc.cluster.local".into(),
            }),
            ..RenderOptions::default()
        };
        let mut vss = rendered(&options);
        let cold = BTreeSet::from([ObjectKey::new("default", "hello-00001")]);
        route_through_local_gateway(&mut vss[0], &cold, &options);
        assert_eq!(hosts(&vss[0]), [("local.mesh-edge.svc.cluster.local".to_string(), 80)]);
    }

    #[test]
    fn revision_hosts_read_back() {
        let key = ObjectKey::new("default", "hello-00001");
        assert_eq!(revision_of_host(&names::revision_host(&key)), Some(key));
        assert_eq!(revision_of_host("hello.default.example.com"), None);
        assert_eq!(revision_of_host("a.b.c.svc.cluster.local"), None);
    }
}
