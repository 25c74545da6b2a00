//! The Kubernetes kinds the controller reads and writes, and how to reach
//! each one through the API.
//!
//! Every object goes through [`DynamicObject`] with the [`ApiResource`]
//! below, so the Knative and Istio CRDs (which k8s-openapi does not know)
//! and the built-in kinds share one code path for watching, applying and
//! deleting; typed k8s-openapi structs are used only where a field is read
//! (Deployment status, EndpointSlice endpoints, the Lease).

use std::fmt;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::core::TypeMeta;
use serde::de::DeserializeOwned;

/// The one field manager of every server-side apply revgate makes, so that
/// `kubectl get -o yaml --show-managed-fields` names revgate as the owner
/// of exactly the fields it sets.
pub const FIELD_MANAGER: &str = "revgate";

/// Label Knative puts on a revision's Deployment and Services (and that
/// Kubernetes copies to the EndpointSlices): the revision's name. The
/// controller watches only objects that carry it.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";

/// Label on the VirtualServices of a route (net-istio's).
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";

/// Label on every VirtualService net-istio writes: the Ingress it implements.
pub const INGRESS_LABEL: &str = "networking.internal.knative.dev/ingress";

/// Label Kubernetes puts on an EndpointSlice: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A kind the controller handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `serving.knative.dev/v1` Service (a "ksvc").
    KnativeService,
    Configuration,
    Route,
    Revision,
    /// `apps/v1` Deployment of a revision.
    Deployment,
    /// `v1` Service of a revision.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice of a revision's Service: readiness.
    EndpointSlice,
    /// `v1` Pod of a revision: why it does not run (read only).
    Pod,
    /// `networking.istio.io/v1beta1` VirtualService of a route.
    VirtualService,
    /// `extensions.istio.io/v1alpha1` WasmPlugin: the gateway filter.
    WasmPlugin,
    /// `v1` ConfigMap: only those in `knative-serving` are read.
    ConfigMap,
    /// `serving.knative.dev/v1beta1` DomainMapping (see [`crate::domain_mappings`]).
    DomainMapping,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 12] = [
        Kind::KnativeService,
        Kind::Configuration,
        Kind::Route,
        Kind::Revision,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::VirtualService,
        Kind::WasmPlugin,
        Kind::ConfigMap,
        Kind::DomainMapping,
    ];

    /// The kinds watched in every selected namespace, in the order a
    /// namespace's objects are reconciled.
    pub const NAMESPACED: [Kind; 10] = [
        Kind::KnativeService,
        Kind::Configuration,
        Kind::Route,
        Kind::Revision,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::VirtualService,
        Kind::DomainMapping,
    ];

    /// `(group, version, kind, plural)`.
    pub fn coordinates(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::KnativeService => ("serving.knative.dev", "v1", "Service", "services"),
            Kind::Configuration => ("serving.knative.dev", "v1", "Configuration", "configurations"),
            Kind::Route => ("serving.knative.dev", "v1", "Route", "routes"),
            Kind::Revision => ("serving.knative.dev", "v1", "Revision", "revisions"),
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::VirtualService => ("networking.istio.io", "v1beta1", "VirtualService", "virtualservices"),
            Kind::WasmPlugin => ("extensions.istio.io", "v1alpha1", "WasmPlugin", "wasmplugins"),
            Kind::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
            Kind::DomainMapping => ("serving.knative.dev", "v1beta1", "DomainMapping", "domainmappings"),
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.coordinates();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// `serving.knative.dev/v1`, `apps/v1`, `v1`…
    pub fn api_version(self) -> String {
        self.api_resource().api_version
    }

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        self.coordinates().2
    }

    /// The kind of an object, from its `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == kind && k.api_version() == api_version)
    }

    /// The kind of a dynamic object, from its type metadata.
    pub fn of_object(object: &DynamicObject) -> Option<Kind> {
        object.types.as_ref().and_then(|t| Kind::of(&t.api_version, &t.kind))
    }

    /// Type metadata for a dynamic object of this kind.
    pub fn type_meta(self) -> TypeMeta {
        TypeMeta { api_version: self.api_version(), kind: self.name().to_string() }
    }

    /// The label selector the controller watches this kind with: only the
    /// objects revgate made (or, for EndpointSlices, that Kubernetes made
    /// for revgate's Services), so a busy namespace's other Deployments do
    /// not fill the controller's memory.
    pub fn watch_selector(self) -> Option<&'static str> {
        match self {
            Kind::Deployment | Kind::Service | Kind::EndpointSlice | Kind::Pod => Some(REVISION_LABEL),
            // A Route's and a DomainMapping's VirtualServices both name
            // their (networking) Ingress, as net-istio labels them.
            Kind::VirtualService => Some(INGRESS_LABEL),
            _ => None,
        }
    }

    /// Whether revgate writes this kind's status subresource.
    pub fn has_knative_status(self) -> bool {
        matches!(self, Kind::KnativeService | Kind::Configuration | Kind::Route | Kind::Revision | Kind::DomainMapping)
    }
}

/// `Service.serving.knative.dev`, `Deployment.apps`, `Service`: unambiguous in messages.
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (group, _, kind, _) = self.coordinates();
        if group.is_empty() { f.write_str(kind) } else { write!(f, "{kind}.{group}") }
    }
}

/// Reads a dynamic object as a typed one (a k8s-openapi struct or a model type).
pub fn typed<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_type_metadata() {
        for kind in Kind::ALL {
            let meta = kind.type_meta();
            assert_eq!(Kind::of(&meta.api_version, &meta.kind), Some(kind), "{kind}");
        }
        assert_eq!(Kind::of("v1", "Service"), Some(Kind::Service));
        assert_eq!(Kind::of("serving.knative.dev/v1", "Service"), Some(Kind::KnativeService));
        assert_eq!(Kind::of("apps/v1", "StatefulSet"), None);
    }

    #[test]
    fn names_in_messages_carry_the_group() {
        assert_eq!(Kind::KnativeService.to_string(), "Service.serving.knative.dev");
        assert_eq!(Kind::Service.to_string(), "Service");
        assert_eq!(Kind::Deployment.api_resource().plural, "deployments");
    }
}
