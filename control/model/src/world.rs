//! The applied state: every object the user applied, the children Services
//! own, and the revisions Configurations created. A [`World`] is an
//! immutable value: [`World::apply`] and [`World::delete`] return a new one,
//! so a caller can swap it in atomically or drop it on error.
//!
//! What Knative's controllers do on reconcile happens here at apply time,
//! because it depends only on the applied objects: a Service's Configuration
//! and Route are (re)written, and a changed template creates a Revision. What
//! depends on the outside world (revision readiness, gateway acceptance)
//! comes in as [`Observed`] when status or a plan is asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::autoscaling::RevisionScaling;
use crate::config::Settings;
use crate::domainmapping::{DOMAIN_MAPPING_RESOURCE, DomainClaim, DomainMapping};
use crate::error::{ApplyError, FieldError, Problems};
use crate::manifest::{Document, Reference, Resource, ResourceKind, SourceRef};
use crate::meta::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, LAST_APPLIED_ANNOTATION, ObjectMeta, OwnerReference,
    SERVICE_LABEL, SERVING_API_VERSION, rfc3339,
};
use crate::names;
pub use crate::observed::{IngressState, Observed, RevisionReadiness};
use crate::plan::ObjectKey;
use crate::resources::{
    ConfigMap, Configuration, ConfigurationSpec, ConfigurationStatus, Revision, Route, RouteSpec, Service,
    TrafficTarget,
};
use crate::validation;

/// All applied objects, keyed by namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct World {
    #[serde(with = "keyed_list")]
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    #[serde(with = "keyed_list")]
    pub configurations: BTreeMap<ObjectKey, Arc<Configuration>>,
    #[serde(with = "keyed_list")]
    pub routes: BTreeMap<ObjectKey, Arc<Route>>,
    #[serde(with = "keyed_list")]
    pub revisions: BTreeMap<ObjectKey, Arc<Revision>>,
    #[serde(with = "keyed_list")]
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    #[serde(default, with = "keyed_list")]
    pub domain_mappings: BTreeMap<ObjectKey, Arc<DomainMapping>>,
    /// Which namespace holds each mapped domain, keyed by
    /// [`crate::domainmapping::claim_key`] (Knative's `ClusterDomainClaim`s).
    #[serde(default, with = "keyed_list")]
    pub domain_claims: BTreeMap<ObjectKey, Arc<DomainClaim>>,
}

/// Stores `object` under `key` unless an equal one is there: the object a
/// world shares with its predecessor stays the same allocation, so comparing
/// and saving two worlds costs what changed between them, not what they hold
/// (`Arc`'s equality of `Eq` types starts with a pointer comparison).
fn put<T: PartialEq>(map: &mut BTreeMap<ObjectKey, Arc<T>>, key: ObjectKey, object: T) {
    if map.get(&key).map(Arc::as_ref) != Some(&object) {
        map.insert(key, Arc::new(object));
    }
}

/// JSON objects need string keys; a world is stored as lists of `[key, object]` pairs.
mod keyed_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::plan::ObjectKey;

    pub fn serialize<S: Serializer, T: Serialize>(map: &BTreeMap<ObjectKey, T>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<ObjectKey, T>, D::Error> {
        Ok(Vec::<(ObjectKey, T)>::deserialize(d)?.into_iter().collect())
    }
}

/// What happened to one object, as `kubectl apply` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Created => "created",
            ChangeKind::Configured => "configured",
            ChangeKind::Unchanged => "unchanged",
            ChangeKind::Deleted => "deleted",
        })
    }
}

/// One line of `kubectl apply` output: `service.serving.knative.dev/hello created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `service.serving.knative.dev`, `revision.serving.knative.dev`, `configmap`…
    pub resource: String,
    pub key: ObjectKey,
    pub change: ChangeKind,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.resource, self.key.name, self.change)
    }
}

pub const SERVICE_RESOURCE: &str = "service.serving.knative.dev";
pub const CONFIGURATION_RESOURCE: &str = "configuration.serving.knative.dev";
pub const ROUTE_RESOURCE: &str = "route.serving.knative.dev";
pub const REVISION_RESOURCE: &str = "revision.serving.knative.dev";
pub const CONFIG_MAP_RESOURCE: &str = "configmap";

pub(crate) fn change(resource: &str, key: ObjectKey, change: ChangeKind) -> Change {
    Change { resource: resource.to_string(), key, change }
}

pub(crate) type Changes = Vec<Change>;

impl World {
    /// Applies documents in order, as `kubectl apply -f` does. All or
    /// nothing: on any error the result is `Err` with every problem found,
    /// and `self` is untouched.
    pub fn apply(&self, docs: &[Document], now_unix_secs: u64) -> Result<(World, Vec<Change>), ApplyError> {
        let now = rfc3339(now_unix_secs);
        let mut world = self.clone();
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for doc in docs {
            // Every `apply_*` checks everything that can fail before it
            // changes anything, so a document that fails leaves no partial
            // change behind for the documents after it — without copying the
            // world per document, which made large applies quadratic.
            let mut doc_changes = Vec::new();
            let result = match &doc.resource {
                Resource::Service(s) => world.apply_service(s, &now, &mut doc_changes),
                Resource::Configuration(c) => world.apply_configuration(c, &now, &mut doc_changes),
                Resource::Route(r) => world.apply_route(r, &now, &mut doc_changes),
                Resource::ConfigMap(m) => world.apply_config_map(m, &now, &mut doc_changes),
                Resource::DomainMapping(m) => world.apply_domain_mapping(m, &now, &mut doc_changes),
            };
            match result {
                Ok(()) => changes.extend(doc_changes),
                Err(problems) => errors.extend(field_errors(&doc.source, &doc.resource, problems)),
            }
        }
        if !errors.is_empty() {
            return Err(ApplyError { errors });
        }
        world.record_assigned_traffic();
        Ok((world, changes))
    }

    /// Deletes the named objects. A Service takes its Configuration, Route
    /// and Revisions with it; a Configuration its Revisions. All or nothing:
    /// an object that does not exist is an error.
    pub fn delete(&self, references: &[Reference]) -> Result<(World, Vec<Change>), ApplyError> {
        let mut world = self.clone();
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for reference in references {
            let key = &reference.key;
            let result = match reference.kind {
                ResourceKind::Service => world.delete_service(key, &mut changes),
                ResourceKind::Configuration => world.delete_configuration(key, &mut changes),
                ResourceKind::Route => world.delete_route(key, &mut changes),
                ResourceKind::ConfigMap => match world.config_maps.remove(key) {
                    Some(_) => {
                        changes.push(change(CONFIG_MAP_RESOURCE, key.clone(), ChangeKind::Deleted));
                        Ok(())
                    }
                    None => Err(not_found()),
                },
                ResourceKind::DomainMapping => {
                    if world.remove_domain_mapping(key) {
                        changes.push(change(DOMAIN_MAPPING_RESOURCE, key.clone(), ChangeKind::Deleted));
                        Ok(())
                    } else {
                        Err(not_found())
                    }
                }
            };
            if let Err(problems) = result {
                errors.extend(problems.into_iter().map(|(path, message)| {
                    FieldError::new(reference.kind.as_str(), key, path, message).with_source(Some(&reference.source))
                }));
            }
        }
        if !errors.is_empty() {
            return Err(ApplyError { errors });
        }
        world.record_assigned_traffic();
        Ok((world, changes))
    }

    /// Settings from the `knative-serving` ConfigMaps, with Knative's defaults.
    pub fn settings(&self) -> Settings {
        Settings::from_config_maps(self.config_maps.values().map(Arc::as_ref))
    }

    /// How a revision scales: its autoscaling annotations over
    /// `config-autoscaler`, with its `containerConcurrency` (defaulted from
    /// `config-defaults` when the template left it out). `None` if no such
    /// revision exists. Settings are read now, so a changed ConfigMap applies
    /// to existing revisions, as in Knative.
    pub fn revision_scaling(&self, revision: &ObjectKey) -> Option<RevisionScaling> {
        let revision = self.revisions.get(revision)?;
        let settings = self.settings();
        let container_concurrency =
            revision.spec.container_concurrency.unwrap_or(settings.defaults.container_concurrency);
        Some(RevisionScaling::resolve(
            &revision.metadata.annotations,
            u32::try_from(container_concurrency).unwrap_or(0),
            &settings.autoscaler,
        ))
    }

    /// The revisions a Configuration created, oldest first.
    pub fn revisions_of(&self, configuration: &ObjectKey) -> impl Iterator<Item = &Revision> {
        self.revisions.values().map(Arc::as_ref).filter(move |r| {
            r.metadata.namespace == configuration.namespace
                && r.metadata.labels.get(CONFIGURATION_LABEL) == Some(&configuration.name)
        })
    }

    /// The revision most recently created for a Configuration.
    pub fn latest_created_revision(&self, configuration: &ObjectKey) -> Option<&Revision> {
        let config = self.configurations.get(configuration)?;
        let name = config.status.as_ref()?.latest_created_revision_name.as_ref()?;
        self.revisions.get(&ObjectKey::new(configuration.namespace.clone(), name.clone())).map(Arc::as_ref)
    }

    /// The newest ready revision of a Configuration: the latest created one
    /// if ready, else the ready one of the highest generation.
    pub fn latest_ready_revision(&self, configuration: &ObjectKey, observed: &Observed) -> Option<&Revision> {
        if let Some(latest) = self.latest_created_revision(configuration)
            && observed.is_ready(&latest.metadata.key())
        {
            return Some(latest);
        }
        self.revisions_of(configuration)
            .filter(|r| observed.is_ready(&r.metadata.key()))
            .max_by_key(|r| (revision_generation(r), r.metadata.name.clone()))
    }

    // ----- apply, per kind ------------------------------------------------------
    //
    // Each of these either succeeds or returns its problems with `self`
    // unchanged: every check that can fail comes before the first change.

    fn apply_service(&mut self, input: &Service, now: &str, changes: &mut Changes) -> Result<(), Problems> {
        let settings = self.settings();
        let mut service = input.clone();
        service.status = None;
        validation::default_template(&mut service.spec.template, &settings);
        validation::default_traffic(&mut service.spec.traffic, true);

        let key = service.metadata.key();
        let mut problems = Vec::new();
        validation::validate_metadata(&service.metadata, &mut problems);
        validation::validate_template(&service.spec.template, &key.name, &settings, &mut problems);
        let naming = names::RouteNaming {
            key: &key,
            labels: &service.metadata.labels,
            annotations: &service.metadata.annotations,
        };
        validation::validate_traffic(&service.spec.traffic, true, naming, &settings, &mut problems);
        let existing = self.services.get(&key);
        if let Some(old) = existing {
            validation::validate_template_update(&old.spec.template, &service.spec.template, &mut problems);
        }
        let config_key = ObjectKey::new(key.namespace.clone(), names::service_configuration(&key.name));
        let route_key = ObjectKey::new(key.namespace.clone(), names::service_route(&key.name));
        if let Some(c) = self.configurations.get(&config_key)
            && c.metadata.owner("Service") != Some(key.name.as_str())
        {
            problems.push(not_owned("configuration", &config_key.name));
        }
        if let Some(r) = self.routes.get(&route_key)
            && r.metadata.owner("Service") != Some(key.name.as_str())
        {
            problems.push(not_owned("route", &route_key.name));
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let kind = stamp(&mut service.metadata, existing.map(|s| (&s.metadata, s.spec == service.spec)), now);
        let existing_equal = existing.map(Arc::as_ref) == Some(&service);
        changes.push(change(SERVICE_RESOURCE, key.clone(), if existing_equal { ChangeKind::Unchanged } else { kind }));

        // The children, as Knative's service reconciler makes them.
        let child_meta = |name: String| ObjectMeta {
            name,
            namespace: key.namespace.clone(),
            labels: with_label(&service.metadata.labels, SERVICE_LABEL, &key.name),
            annotations: child_annotations(&service.metadata.annotations),
            owner_references: vec![OwnerReference::controller("Service", &key.name)],
            ..Default::default()
        };
        let configuration = Configuration {
            api_version: SERVING_API_VERSION.to_string(),
            kind: "Configuration".to_string(),
            metadata: child_meta(config_key.name.clone()),
            spec: ConfigurationSpec { template: service.spec.template.clone() },
            status: None,
        };
        self.upsert_configuration(configuration, now, changes)?;
        let traffic = service
            .spec
            .traffic
            .iter()
            .map(|t| TrafficTarget {
                configuration_name: if t.revision_name.is_none() { Some(config_key.name.clone()) } else { None },
                ..t.clone()
            })
            .collect();
        let route = Route {
            api_version: SERVING_API_VERSION.to_string(),
            kind: "Route".to_string(),
            metadata: child_meta(route_key.name.clone()),
            spec: RouteSpec { traffic },
            status: None,
        };
        self.upsert_route(route, now);
        put(&mut self.services, key, service);
        Ok(())
    }

    fn apply_configuration(&mut self, input: &Configuration, now: &str, changes: &mut Changes) -> Result<(), Problems> {
        let settings = self.settings();
        let mut configuration = input.clone();
        configuration.status = None;
        validation::default_template(&mut configuration.spec.template, &settings);
        let key = configuration.metadata.key();
        let mut problems = Vec::new();
        validation::validate_metadata(&configuration.metadata, &mut problems);
        validation::validate_template(&configuration.spec.template, &key.name, &settings, &mut problems);
        if let Some(owner) = self.configurations.get(&key).and_then(|c| c.metadata.owner("Service")) {
            problems.push(owned_by_service(owner));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut revisions = Vec::new();
        let kind = self.upsert_configuration(configuration, now, &mut revisions)?;
        changes.push(change(CONFIGURATION_RESOURCE, key, kind));
        changes.extend(revisions);
        Ok(())
    }

    /// Stores a Configuration and creates the revision for a new generation.
    /// Returns what happened to the Configuration; created revisions are
    /// appended to `changes`.
    fn upsert_configuration(
        &mut self,
        mut configuration: Configuration,
        now: &str,
        changes: &mut Changes,
    ) -> Result<ChangeKind, Problems> {
        let key = configuration.metadata.key();
        let existing = self.configurations.get(&key).cloned();
        let mut problems = Vec::new();
        if let Some(old) = &existing {
            validation::validate_template_update(&old.spec.template, &configuration.spec.template, &mut problems);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let same_spec = existing.as_ref().is_some_and(|c| c.spec == configuration.spec);
        let kind = stamp(&mut configuration.metadata, existing.as_ref().map(|c| (&c.metadata, same_spec)), now);
        let generation = configuration.metadata.generation();

        let latest_created = if same_spec {
            existing.as_ref().and_then(|c| c.status.as_ref()).and_then(|s| s.latest_created_revision_name.clone())
        } else {
            Some(self.create_revision(&configuration, now, changes)?)
        };
        configuration.status = Some(ConfigurationStatus {
            observed_generation: Some(generation),
            latest_created_revision_name: latest_created,
            ..Default::default()
        });
        let unchanged = existing.as_deref() == Some(&configuration);
        put(&mut self.configurations, key, configuration);
        Ok(if unchanged { ChangeKind::Unchanged } else { kind })
    }

    /// Creates the revision for a Configuration's current generation and returns its name.
    fn create_revision(
        &mut self,
        configuration: &Configuration,
        now: &str,
        changes: &mut Changes,
    ) -> Result<String, Problems> {
        let template = &configuration.spec.template;
        let config_name = &configuration.metadata.name;
        let generation = configuration.metadata.generation();
        let name = template.metadata.name.clone().unwrap_or_else(|| names::revision_name(config_name, generation));
        let key = ObjectKey::new(configuration.metadata.namespace.clone(), name.clone());

        let mut labels = template.metadata.labels.clone();
        labels.insert(CONFIGURATION_LABEL.to_string(), config_name.clone());
        labels.insert(CONFIGURATION_GENERATION_LABEL.to_string(), generation.to_string());
        if let Some(service) = configuration.metadata.labels.get(SERVICE_LABEL) {
            labels.insert(SERVICE_LABEL.to_string(), service.clone());
        }
        let revision = Revision {
            api_version: SERVING_API_VERSION.to_string(),
            kind: "Revision".to_string(),
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: key.namespace.clone(),
                labels,
                annotations: template.metadata.annotations.clone(),
                generation: Some(1),
                creation_timestamp: Some(now.to_string()),
                owner_references: vec![OwnerReference::controller("Configuration", config_name)],
            },
            spec: template.spec.clone(),
            status: None,
        };
        if let Some(old) = self.revisions.get(&key) {
            // Going back to an earlier named template reuses its revision, as
            // long as it really is the same template of the same configuration.
            let same = old.metadata.labels.get(CONFIGURATION_LABEL) == Some(config_name)
                && old.spec == revision.spec
                && crate::gc::same_but_routing(&old.metadata, &revision.metadata);
            if same {
                return Ok(name);
            }
            return Err(vec![(
                "spec.template.metadata.name".to_string(),
                format!("revision {name:?} already exists with a different template; choose a new name"),
            )]);
        }
        self.revisions.insert(key.clone(), Arc::new(revision));
        changes.push(change(REVISION_RESOURCE, key, ChangeKind::Created));
        Ok(name)
    }

    fn apply_route(&mut self, input: &Route, now: &str, changes: &mut Changes) -> Result<(), Problems> {
        let settings = self.settings();
        let mut route = input.clone();
        route.status = None;
        validation::default_traffic(&mut route.spec.traffic, false);
        let key = route.metadata.key();
        let mut problems = Vec::new();
        validation::validate_metadata(&route.metadata, &mut problems);
        let naming =
            names::RouteNaming { key: &key, labels: &route.metadata.labels, annotations: &route.metadata.annotations };
        validation::validate_traffic(&route.spec.traffic, false, naming, &settings, &mut problems);
        if let Some(owner) = self.routes.get(&key).and_then(|r| r.metadata.owner("Service")) {
            problems.push(owned_by_service(owner));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let kind = self.upsert_route(route, now);
        changes.push(change(ROUTE_RESOURCE, key, kind));
        Ok(())
    }

    fn upsert_route(&mut self, mut route: Route, now: &str) -> ChangeKind {
        let key = route.metadata.key();
        let existing = self.routes.get(&key);
        // The stored status holds the last assigned traffic (see
        // `record_assigned_traffic`), which a new spec does not replace.
        route.status = existing.and_then(|r| r.status.clone());
        let kind = stamp(&mut route.metadata, existing.map(|r| (&r.metadata, r.spec == route.spec)), now);
        let unchanged = existing.map(Arc::as_ref) == Some(&route);
        put(&mut self.routes, key, route);
        if unchanged { ChangeKind::Unchanged } else { kind }
    }

    fn apply_config_map(&mut self, input: &ConfigMap, now: &str, changes: &mut Changes) -> Result<(), Problems> {
        let mut map = input.clone();
        let key = map.metadata.key();
        if let Err(errors) = Settings::check(&map) {
            return Err(errors.into_iter().map(|e| (format!("data[{}]", e.key), e.message)).collect());
        }
        let existing = self.config_maps.get(&key);
        let kind = stamp(&mut map.metadata, existing.map(|m| (&m.metadata, m.data == map.data)), now);
        let kind = if existing.map(Arc::as_ref) == Some(&map) { ChangeKind::Unchanged } else { kind };
        put(&mut self.config_maps, key.clone(), map);
        changes.push(change(CONFIG_MAP_RESOURCE, key, kind));
        Ok(())
    }

    // ----- delete, per kind -----------------------------------------------------

    fn delete_service(&mut self, key: &ObjectKey, changes: &mut Changes) -> Result<(), Problems> {
        if self.services.remove(key).is_none() {
            return Err(not_found());
        }
        changes.push(change(SERVICE_RESOURCE, key.clone(), ChangeKind::Deleted));
        let config_key = ObjectKey::new(key.namespace.clone(), names::service_configuration(&key.name));
        if self.configurations.get(&config_key).and_then(|c| c.metadata.owner("Service")) == Some(key.name.as_str()) {
            self.remove_configuration(&config_key, changes);
        }
        let route_key = ObjectKey::new(key.namespace.clone(), names::service_route(&key.name));
        if self.routes.get(&route_key).and_then(|r| r.metadata.owner("Service")) == Some(key.name.as_str()) {
            self.routes.remove(&route_key);
            changes.push(change(ROUTE_RESOURCE, route_key, ChangeKind::Deleted));
        }
        Ok(())
    }

    fn delete_configuration(&mut self, key: &ObjectKey, changes: &mut Changes) -> Result<(), Problems> {
        match self.configurations.get(key) {
            None => Err(not_found()),
            Some(c) => match c.metadata.owner("Service") {
                Some(owner) => Err(vec![owned_by_service(owner)]),
                None => {
                    self.remove_configuration(key, changes);
                    Ok(())
                }
            },
        }
    }

    fn remove_configuration(&mut self, key: &ObjectKey, changes: &mut Changes) {
        self.configurations.remove(key);
        changes.push(change(CONFIGURATION_RESOURCE, key.clone(), ChangeKind::Deleted));
        let revisions: Vec<ObjectKey> = self.revisions_of(key).map(|r| r.metadata.key()).collect();
        for revision in revisions {
            self.revisions.remove(&revision);
            changes.push(change(REVISION_RESOURCE, revision, ChangeKind::Deleted));
        }
    }

    fn delete_route(&mut self, key: &ObjectKey, changes: &mut Changes) -> Result<(), Problems> {
        match self.routes.get(key) {
            None => Err(not_found()),
            Some(r) => match r.metadata.owner("Service") {
                Some(owner) => Err(vec![owned_by_service(owner)]),
                None => {
                    self.routes.remove(key);
                    changes.push(change(ROUTE_RESOURCE, key.clone(), ChangeKind::Deleted));
                    Ok(())
                }
            },
        }
    }
}

/// Sets the server-managed metadata of an object about to be stored, given
/// the stored version's metadata and whether its spec is unchanged. Returns
/// Created or Configured (the caller decides about Unchanged).
pub(crate) fn stamp(meta: &mut ObjectMeta, existing: Option<(&ObjectMeta, bool)>, now: &str) -> ChangeKind {
    match existing {
        None => {
            meta.generation = Some(1);
            meta.creation_timestamp = Some(now.to_string());
            ChangeKind::Created
        }
        Some((old, same_spec)) => {
            meta.generation = Some(old.generation() + i64::from(!same_spec));
            meta.creation_timestamp.clone_from(&old.creation_timestamp);
            ChangeKind::Configured
        }
    }
}

/// The configuration generation a revision was created for.
pub(crate) fn revision_generation(revision: &Revision) -> i64 {
    revision.metadata.labels.get(CONFIGURATION_GENERATION_LABEL).and_then(|g| g.parse().ok()).unwrap_or(0)
}

fn with_label(labels: &BTreeMap<String, String>, key: &str, value: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(key.to_string(), value.to_string());
    labels
}

fn child_annotations(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut annotations = annotations.clone();
    annotations.remove(LAST_APPLIED_ANNOTATION);
    annotations
}

fn not_found() -> Problems {
    vec![(String::new(), "not found".to_string())]
}

fn not_owned(kind: &str, name: &str) -> (String, String) {
    (
        "metadata.name".to_string(),
        format!(
            "a {kind} named {name:?} already exists and does not belong to this service; delete it or rename the service"
        ),
    )
}

fn owned_by_service(owner: &str) -> (String, String) {
    (String::new(), format!("owned by service {owner:?}; change or delete the Service instead"))
}

fn field_errors(source: &SourceRef, resource: &Resource, problems: Problems) -> Vec<FieldError> {
    let key = resource.key();
    problems
        .into_iter()
        .map(|(path, message)| FieldError::new(resource.kind(), &key, path, message).with_source(Some(source)))
        .collect()
}
