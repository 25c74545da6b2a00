//! Calls from inside the mesh to a revision at zero: when the `-mesh`
//! VirtualServices send sidecars through the local gateway (whose filter
//! holds them) and when straight to the revision. `revgate-istio`'s `mesh`
//! module rewrites the objects; this module decides, purely, and orders the
//! switch against the scale to zero.
//!
//! | the revision's scale wish | its ready endpoints (EndpointSlices) | the cluster's `-mesh` now | `-mesh` destination |
//! |---|---|---|---|
//! | 0 (being taken to zero, or at zero) | any | any | the local gateway |
//! | none yet, or above 0 | at least one | any | the revision (direct) |
//! | none yet, or above 0 | none (activating) | the local gateway | the local gateway |
//! | none yet, or above 0 | none | direct, or no VirtualService yet | direct (nothing took it to zero) |
//!
//! The state lives in the cluster, as the rollout state does: a restarted
//! controller, which has no wishes yet, keeps a revision at zero behind the
//! gateway until its pods are ready. The destinations pointing at the
//! gateway still name their revision in the `Knative-Serving-Revision` and
//! `Knative-Serving-Namespace` headers they set, which is how
//! [`mesh_routes`] reads them back.
//!
//! # Ordering
//!
//! **Going cold.** The KPA's zero reaches [`crate::KubeRuntime`] only after
//! every gateway filter heard the revision is cold (revgate's zero gate), so
//! the gateway holds what it is sent from then on. The runtime records the
//! zero at once (the table's first row, so the next pass switches the
//! `-mesh` destinations to the local gateway; [`reconcile_held`] asks for
//! that pass), but writes it only once the cluster's `-mesh`
//! VirtualServices no longer route to the revision directly
//! ([`MeshRoutes::direct`]) and [`crate::scale::MESH_SWITCH_SETTLE`] more has
//! passed for istiod to push the change to the sidecars. Until then the
//! Deployments the reconciler applies keep their pods
//! ([`crate::KubeRuntime::replicas`]). So the last pod goes after sidecars
//! route through the gateway; a call a sidecar sent directly just before
//! the switch still finds the pod, which Kubernetes stops gracefully.
//!
//! **Going warm.** A scale from zero is written at once; sidecars keep
//! going through the gateway, which holds their calls until its probe
//! reaches a pod. The destinations switch back to the revision only in a
//! pass that sees the revision's endpoints ready in its EndpointSlices.
//! istiod saw those EndpointSlices before it sees the VirtualService that
//! pass writes, and it pushes endpoints (EDS) ahead of routes (RDS) to each
//! sidecar, so a sidecar has the pods before its routes point at them: no
//! call meets "no healthy upstream" in either direction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use revgate_istio::RenderOptions;
use revgate_istio::mesh::revision_of_host;
use revgate_istio::names::MESH_GATEWAY;
use revgate_istio::virtual_service::{NAMESPACE_HEADER, REVISION_HEADER};
use revgate_model::plan::ObjectKey;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::kinds::Kind;
use crate::readiness;
use crate::snapshot::{ClusterReader, Snapshot, controller_owner};

/// The revisions of a namespace whose in-mesh calls go through the local
/// gateway (the table in the module docs), given the runtime's wishes.
pub fn through_gateway(
    snapshot: &Snapshot,
    wishes: &BTreeMap<ObjectKey, u32>,
    options: &RenderOptions,
) -> BTreeSet<ObjectKey> {
    let pods = readiness::pods(snapshot);
    let now = mesh_routes(snapshot, options);
    snapshot
        .all(Kind::Revision)
        .filter_map(|revision| revision.metadata.name.as_deref())
        .map(|name| ObjectKey::new(snapshot.namespace.clone(), name.to_string()))
        .filter(|key| {
            let ready = pods.get(&key.name).is_some_and(|p| !p.ready.is_empty());
            wishes.get(key) == Some(&0) || (!ready && now.through_gateway.contains(key))
        })
        .collect()
}

/// Where the cluster's `-mesh` VirtualServices send sidecars, per revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshRoutes {
    /// Revisions some `-mesh` destination calls directly.
    pub direct: BTreeSet<ObjectKey>,
    /// Revisions some `-mesh` destination reaches through the local gateway.
    pub through_gateway: BTreeSet<ObjectKey>,
}

/// Reads the `-mesh` VirtualServices of the Routes in the cluster (being
/// deleted or not: sidecars keep one until it is gone). Empty without a
/// local gateway: then nothing is switched, and nothing waits for a switch.
pub fn mesh_routes(snapshot: &Snapshot, options: &RenderOptions) -> MeshRoutes {
    let mut routes = MeshRoutes::default();
    let Some(gateway) = &options.local_gateway else { return routes };
    for vs in snapshot.all(Kind::VirtualService) {
        if !matches!(controller_owner(&vs.metadata), Some((Kind::Route, _, _))) {
            continue;
        }
        let spec = vs.data.get("spec");
        let for_sidecars = spec
            .and_then(|s| s.get("gateways"))
            .and_then(Value::as_array)
            .is_some_and(|g| g.iter().any(|g| g.as_str() == Some(MESH_GATEWAY)));
        if !for_sidecars {
            continue;
        }
        let destinations = spec
            .and_then(|s| s.get("http"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| h.get("route").and_then(Value::as_array))
            .flatten();
        for destination in destinations {
            let Some(host) = destination.pointer("/destination/host").and_then(Value::as_str) else { continue };
            if host == gateway.service {
                let header =
                    |name: &str| destination.pointer(&format!("/headers/request/set/{name}")).and_then(Value::as_str);
                if let (Some(name), Some(namespace)) = (header(REVISION_HEADER), header(NAMESPACE_HEADER)) {
                    routes.through_gateway.insert(ObjectKey::new(namespace.to_string(), name.to_string()));
                }
            } else if let Some(revision) = revision_of_host(host) {
                routes.direct.insert(revision);
            }
        }
    }
    routes
}

/// [`MeshRoutes::direct`] of every namespace in scope: what sidecars are
/// sent to directly, for the scales to zero that wait on it.
pub fn direct_in_scope(
    reader: &dyn ClusterReader,
    scope: &Store<Namespace>,
    options: &RenderOptions,
) -> BTreeSet<ObjectKey> {
    scope
        .state()
        .iter()
        .filter_map(|ns| ns.metadata.name.as_deref().map(|name| mesh_routes(&reader.snapshot(name), options).direct))
        .flatten()
        .collect()
}

/// Asks for a pass over the namespace of every revision whose scale to
/// zero starts waiting for the mesh, so that its `-mesh` destinations
/// switch without waiting for the next resync. Ends when `held` does.
pub async fn reconcile_held(
    mut held: watch::Receiver<Arc<BTreeSet<ObjectKey>>>,
    reconciles: broadcast::Sender<ObjectRef<Namespace>>,
) {
    let mut asked: Arc<BTreeSet<ObjectKey>> = Arc::default();
    loop {
        let current = held.borrow_and_update().clone();
        let namespaces: BTreeSet<&str> = current.difference(&asked).map(|key| key.namespace.as_str()).collect();
        for namespace in namespaces {
            let _ = reconciles.send(ObjectRef::new(namespace));
        }
        asked = current;
        if held.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{Fixture, NAMESPACE};

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(NAMESPACE, name)
    }

    fn snapshot(objects: &[Fixture]) -> Snapshot {
        let mut snapshot = Snapshot::new(NAMESPACE);
        for object in objects {
            snapshot.insert(object.object());
        }
        snapshot
    }

    fn mesh_vs(name: &str, route: &Fixture, destinations: &[(&str, &str)]) -> Fixture {
        let route_entries: Vec<Value> = destinations
            .iter()
            .map(|(host, revision)| {
                json!({"destination": {"host": host, "port": {"number": 80}}, "weight": 100,
                       "headers": {"request": {"set": {REVISION_HEADER: revision, NAMESPACE_HEADER: NAMESPACE}}}})
            })
            .collect();
        Fixture::new(Kind::VirtualService, name)
            .set("/spec", json!({"gateways": ["mesh"], "hosts": ["hello.default"], "http": [{"route": route_entries}]}))
            .owned_by(route)
    }

    const GATEWAY: &str = "knative-local-gateway.istio-system.svc.cluster.local";

    #[test]
    fn the_truth_table() {
        let route = Fixture::new(Kind::Route, "hello");
        let revisions = [Fixture::revision("hello-00001"), Fixture::revision("hello-00002")];
        let warm = Fixture::endpoint_slice("hello-00001", "a").endpoint("10.0.0.1", Some(true));
        let direct = mesh_vs(
            "hello-mesh",
            &route,
            &[
                ("hello-00001.default.svc.cluster.local", "hello-00001"),
                ("hello-00002.default.svc.cluster.local", "hello-00002"),
            ],
        );
        let switched = mesh_vs("hello-mesh", &route, &[(GATEWAY, "hello-00001"), (GATEWAY, "hello-00002")]);
        type Case<'a> = (&'a Fixture, &'a [(&'a str, u32)], &'a [&'a str]);
        let cases: [Case<'_>; 6] = [
            (&direct, &[], &[]),
            (&direct, &[("hello-00001", 2), ("hello-00002", 1)], &[]),
            (&direct, &[("hello-00001", 0)], &["hello-00001"]),
            (&direct, &[("hello-00002", 0)], &["hello-00002"]),
            // hello-00001 has a ready pod: direct again; hello-00002 is still activating.
            (&switched, &[("hello-00001", 1), ("hello-00002", 1)], &["hello-00002"]),
            (&switched, &[], &["hello-00002"]),
        ];
        for (vs, wishes, want) in cases {
            let mut cluster = snapshot(&revisions);
            cluster.insert(warm.object());
            cluster.insert(vs.object());
            let wishes = wishes.iter().map(|(n, r)| (key(n), *r)).collect();
            let want: BTreeSet<ObjectKey> = want.iter().map(|n| key(n)).collect();
            assert_eq!(through_gateway(&cluster, &wishes, &RenderOptions::default()), want, "wishes {wishes:?}");
        }
    }

    #[test]
    fn only_route_owned_mesh_virtual_services_are_read() {
        let route = Fixture::new(Kind::Route, "hello");
        let vs = |name: &str, gateways: Value, host: &str| {
            Fixture::new(Kind::VirtualService, name).set(
                "/spec",
                json!({"gateways": gateways, "hosts": ["hello.default"], "http": [{"route": [
                    {"destination": {"host": host, "port": {"number": 80}}, "weight": 100}]}]}),
            )
        };
        let cluster = snapshot(&[
            vs("hello-mesh", json!(["mesh"]), "hello-00001.default.svc.cluster.local").owned_by(&route),
            vs(
                "hello-ingress",
                json!(["knative-serving/knative-ingress-gateway"]),
                "hello-00002.default.svc.cluster.local",
            )
            .owned_by(&route),
            vs("other-mesh", json!(["mesh"]), "hello-00003.default.svc.cluster.local"),
            mesh_vs("cold-mesh", &route, &[(GATEWAY, "hello-00004")]),
        ]);
        let routes = mesh_routes(&cluster, &RenderOptions::default());
        assert_eq!(routes.direct, BTreeSet::from([key("hello-00001")]));
        assert_eq!(routes.through_gateway, BTreeSet::from([key("hello-00004")]));
        let without = RenderOptions { local_gateway: None, ..RenderOptions::default() };
        assert_eq!(mesh_routes(&cluster, &without), MeshRoutes::default(), "no local gateway: nothing to wait for");
    }
}
