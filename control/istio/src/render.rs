//! Everything cluster mode writes for a world, in apply order, and as one
//! YAML stream for `kubectl apply -f -`.

use revgate_model::plan::GatewayPlan;
use revgate_model::{Observed, World};
use serde::Serialize;

use crate::deployment::{Deployment, deployment};
use crate::domain_mapping;
use crate::meta::ObjectMeta;
use crate::options::RenderOptions;
use crate::service::{Service, revision_service, route_services};
use crate::virtual_service::{VirtualService, virtual_services};
use crate::wasm_plugin::{WasmPlugin, wasm_plugin};

/// One generated object. Serializes as the object itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    Service(Service),
    Deployment(Deployment),
    VirtualService(VirtualService),
    WasmPlugin(WasmPlugin),
}

impl Object {
    pub fn api_version(&self) -> &str {
        match self {
            Object::Service(o) => &o.api_version,
            Object::Deployment(o) => &o.api_version,
            Object::VirtualService(o) => &o.api_version,
            Object::WasmPlugin(o) => &o.api_version,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            Object::Service(o) => &o.kind,
            Object::Deployment(o) => &o.kind,
            Object::VirtualService(o) => &o.kind,
            Object::WasmPlugin(o) => &o.kind,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::WasmPlugin(o) => &o.metadata,
        }
    }
}

/// A generated object that could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {kind} {namespace}/{name} as YAML: {source}")]
pub struct RenderError {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: serde_yaml_ng::Error,
}

/// Every object for the world, with every revision taken as ready (what
/// `revgate render` shows for manifests applied to an empty cluster).
pub fn render(world: &World, options: &RenderOptions) -> Vec<Object> {
    render_plan(world, &world.plan(&Observed::default()), options)
}

/// Every object for the world and a plan computed from it (a controller
/// passes the plan for what it observed). Ordered so that each object's
/// dependencies come first: Services (what VirtualServices route to, and
/// the routes' own names), then Deployments, VirtualServices, and the
/// WasmPlugin last, so the filter starts when everything it may be asked
/// about exists. Services are sorted by namespace and name, Deployments by
/// revision, VirtualServices by route (`-mesh` before `-ingress`, as
/// net-istio lists them).
pub fn render_plan(world: &World, plan: &GatewayPlan, options: &RenderOptions) -> Vec<Object> {
    let mut services: Vec<Service> = world.revisions.values().map(|r| revision_service(r, options)).collect();
    services.extend(route_services(world, plan, options));
    services.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    let mut objects: Vec<Object> = services.into_iter().map(Object::Service).collect();
    for (key, revision) in &world.revisions {
        // Every stored revision resolves; the guard only keeps this total.
        if let Some(scaling) = world.revision_scaling(key) {
            objects.push(Object::Deployment(deployment(revision, &scaling, options)));
        }
    }
    objects.extend(virtual_services(world, plan, options).into_iter().map(Object::VirtualService));
    objects.extend(domain_mapping::virtual_services(world, plan, options).into_iter().map(Object::VirtualService));
    objects.push(Object::WasmPlugin(wasm_plugin(options)));
    objects
}

/// The objects as one YAML stream, documents separated by `---`.
pub fn to_yaml_stream(objects: &[Object]) -> Result<String, RenderError> {
    let documents = objects
        .iter()
        .map(|object| {
            serde_yaml_ng::to_string(object).map_err(|source| RenderError {
                kind: object.kind().to_string(),
                namespace: object.metadata().namespace.clone(),
                name: object.metadata().name.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}
