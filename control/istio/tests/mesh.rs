//! The `-mesh` VirtualServices the controller writes while revisions are at
//! zero (in-mesh calls through the local gateway) are as valid as the warm
//! ones, for every Knative sample, and differ from them only in where the
//! destinations point.

mod common;

use common::*;
use revgate_istio::options::DEFAULT_LOCAL_GATEWAY_SERVICE;
use revgate_istio::{Object, RenderOptions, mesh, render};

#[test]
fn every_sample_at_zero_renders_valid_objects_routing_the_mesh_through_the_local_gateway() {
    let schemas = schemas();
    let options = RenderOptions::default();
    for (name, _) in samples() {
        let world = sample_world(&name);
        let warm = render(&world, &options);
        let mut cold = warm.clone();
        mesh::all_through_local_gateway(&mut cold, &options);
        for object in to_json(&cold) {
            assert_valid(&schemas, &format!("{name} at zero: {}", object["metadata"]["name"]), &object);
        }
        for (warm, cold) in warm.iter().zip(&cold) {
            let (Object::VirtualService(warm), Object::VirtualService(cold)) = (warm, cold) else {
                assert_eq!(warm, cold, "{name}: only VirtualServices change");
                continue;
            };
            let destinations = |vs: &revgate_istio::VirtualService| -> Vec<String> {
                vs.spec.http.iter().flat_map(|h| &h.route).map(|r| r.destination.host.clone()).collect()
            };
            if mesh::is_mesh(warm) {
                assert!(
                    destinations(cold).iter().all(|h| h == DEFAULT_LOCAL_GATEWAY_SERVICE),
                    "{name}: every in-mesh call goes through the local gateway: {cold:#?}"
                );
                assert_eq!(destinations(warm).len(), destinations(cold).len(), "{name}: same splits");
                assert!(
                    destinations(warm).iter().all(|h| mesh::revision_of_host(h).is_some()),
                    "{name}: warm is direct"
                );
            } else {
                assert_eq!(warm, cold, "{name}: the gateways' VirtualService does not change");
            }
        }
    }
}
