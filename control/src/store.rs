//! Standalone state: the applied world in an embedded, crash-safe database.
//!
//! Every object lives in a redb table of its kind, keyed `namespace/name`, as
//! JSON. An apply is one write transaction, so a crash leaves either the old
//! world or the new one, never a mix. The store is written only by the
//! control plane's single owner of the world (see `control.rs`).
//!
//! Besides the world, the `endpoints` table keeps the endpoints registered
//! through the admin API (`serve --runtime external`): whoever runs those
//! instances registered them once, and a restarted control plane must not
//! withdraw them from Envoy while they still serve. The external runtime
//! (`external.rs`) writes them through a [`RegistrationStore`].
//!
//! A row that cannot be read back (invalid JSON, nesting deeper than the JSON
//! reader accepts, a malformed key) does not stop the store from opening:
//! it is set aside as an [`UnreadableObject`], reported, and removed when the
//! user deletes the object it stood for.
//!
//! `state.redb` holds environment values of revisions, so it is created
//! readable by its owner only, and an existing file is tightened at open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use revgate_model::domainmapping::DOMAIN_MAPPING_RESOURCE;
use revgate_model::plan::{Endpoint, ObjectKey};
use revgate_model::world::{
    CONFIG_MAP_RESOURCE, CONFIGURATION_RESOURCE, ChangeKind, REVISION_RESOURCE, ROUTE_RESOURCE, SERVICE_RESOURCE,
};
use revgate_model::{Change, Reference, ResourceKind, World, names};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const CONFIGURATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("configurations");
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revisions");
const CONFIG_MAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("configmaps");
const DOMAIN_MAPPINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("domainmappings");
/// Knative's ClusterDomainClaims, keyed `/<domain>` (cluster-wide: no namespace).
const DOMAIN_CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusterdomainclaims");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");

/// The database file inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// Mode of `state.redb`: it holds revisions' environment values.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;
/// Mode of a state directory revgate creates.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;

/// Errors of the state store; each says which file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening state database {path}: {source} (is another `revgate serve` using this state directory?)")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("state database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("creating the state directory {path} or restricting it to its owner: {source} (check its permissions)")]
    Permissions { path: PathBuf, source: std::io::Error },
}

/// A stored row that could not be read back; the rest of the world loads
/// without it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnreadableObject {
    /// The table, which is the object's kind (`services`, `revisions`, …).
    pub table: String,
    /// `namespace/name`.
    pub key: String,
    /// Why it could not be read.
    pub error: String,
}

impl UnreadableObject {
    /// The object's resource, as `kubectl` names it (`services.serving.knative.dev`).
    pub fn resource(&self) -> &'static str {
        match self.table.as_str() {
            "services" => "services.serving.knative.dev",
            "configurations" => "configurations.serving.knative.dev",
            "routes" => "routes.serving.knative.dev",
            "revisions" => "revisions.serving.knative.dev",
            "configmaps" => "configmaps",
            "domainmappings" => "domainmappings.serving.knative.dev",
            "clusterdomainclaims" => "clusterdomainclaims.networking.internal.knative.dev",
            _ => "objects",
        }
    }
}

impl std::fmt::Display for UnreadableObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} is stored but cannot be read ({}); delete it to remove it",
            self.resource(),
            self.key,
            self.error
        )
    }
}

/// Endpoints registered for a revision, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub endpoints: Vec<Endpoint>,
    /// When they were registered, in seconds since the Unix epoch.
    pub registered_at: u64,
}

/// The world, persisted.
#[derive(Debug)]
pub struct Store {
    /// Shared with the [`RegistrationStore`] of the same file: redb
    /// serialises their write transactions.
    db: Arc<Database>,
    path: PathBuf,
    /// Rows the last [`Store::load`] could not read and no save removed yet.
    unreadable: Vec<UnreadableObject>,
    /// Unreadable rows the next [`Store::save`] removes.
    forget: Vec<UnreadableObject>,
}

/// The database's page cache. The world is read once, at start, and then
/// only written, so a cache the size of the database (redb's default grows
/// to a gigabyte) would hold a second copy of every object for nothing.
const CACHE_BYTES: usize = 8 << 20;

impl Store {
    /// Opens (or creates) `state.redb` inside `state_dir`, creating the
    /// directory if needed. Both are kept to their owner.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(STATE_FILE);
        restrict_file(&path)?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Ok(Self { db: Arc::new(db), path, unreadable: Vec::new(), forget: Vec::new() })
    }

    /// Reads the whole world. Rows that cannot be read are left out and
    /// listed by [`Store::unreadable`].
    pub fn load(&mut self) -> Result<World, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut world = World::default();
        let mut unreadable = Vec::new();
        read_table(&txn, SERVICES, &self.path, &mut world.services, &mut unreadable)?;
        read_table(&txn, CONFIGURATIONS, &self.path, &mut world.configurations, &mut unreadable)?;
        read_table(&txn, ROUTES, &self.path, &mut world.routes, &mut unreadable)?;
        read_table(&txn, REVISIONS, &self.path, &mut world.revisions, &mut unreadable)?;
        read_table(&txn, CONFIG_MAPS, &self.path, &mut world.config_maps, &mut unreadable)?;
        read_table(&txn, DOMAIN_MAPPINGS, &self.path, &mut world.domain_mappings, &mut unreadable)?;
        read_table(&txn, DOMAIN_CLAIMS, &self.path, &mut world.domain_claims, &mut unreadable)?;
        self.unreadable = unreadable;
        Ok(world)
    }

    /// The `endpoints` table, for the runtime that owns registrations.
    pub fn registrations(&self) -> RegistrationStore {
        RegistrationStore { db: self.db.clone(), path: self.path.clone() }
    }

    /// The `rollouts` table, for the rollout driver (`rollout.rs`).
    pub fn rollouts(&self) -> RolloutStore {
        RolloutStore { db: self.db.clone(), path: self.path.clone() }
    }

    /// Rows that could not be read at start and are still stored.
    pub fn unreadable(&self) -> &[UnreadableObject] {
        &self.unreadable
    }

    /// Marks unreadable rows for removal by the next [`Store::save`], so
    /// that they go in the same transaction as the rest of a delete.
    pub fn forget_on_save(&mut self, rows: Vec<UnreadableObject>) {
        self.forget = rows;
    }

    /// Whether the next [`Store::save`] removes unreadable rows.
    pub fn forgets_on_save(&self) -> bool {
        !self.forget.is_empty()
    }

    /// Replaces the stored world by `world` in one transaction, writing only
    /// the objects that differ from `previous`. Registered endpoints of
    /// revisions that are gone leave with them.
    pub fn save(&mut self, previous: &World, world: &World) -> Result<(), StoreError> {
        let forget = std::mem::take(&mut self.forget);
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        write_table(&txn, SERVICES, &previous.services, &world.services).map_err(|e| self.db_error(e))?;
        write_table(&txn, CONFIGURATIONS, &previous.configurations, &world.configurations)
            .map_err(|e| self.db_error(e))?;
        write_table(&txn, ROUTES, &previous.routes, &world.routes).map_err(|e| self.db_error(e))?;
        write_table(&txn, REVISIONS, &previous.revisions, &world.revisions).map_err(|e| self.db_error(e))?;
        write_table(&txn, CONFIG_MAPS, &previous.config_maps, &world.config_maps).map_err(|e| self.db_error(e))?;
        write_table(&txn, DOMAIN_MAPPINGS, &previous.domain_mappings, &world.domain_mappings)
            .map_err(|e| self.db_error(e))?;
        write_table(&txn, DOMAIN_CLAIMS, &previous.domain_claims, &world.domain_claims)
            .map_err(|e| self.db_error(e))?;
        let gone: Vec<&ObjectKey> =
            previous.revisions.keys().filter(|key| !world.revisions.contains_key(key)).collect();
        if !gone.is_empty() {
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            for key in gone {
                endpoints.remove(row_key(key).as_str()).map_err(|e| self.db_error(e))?;
            }
        }
        for row in &forget {
            remove_row(&txn, row).map_err(|e| self.db_error(e))?;
        }
        txn.commit().map_err(|e| self.db_error(e))?;
        self.unreadable.retain(|row| !forget.contains(row));
        Ok(())
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database { path: self.path.clone(), message: e.to_string() }
    }
}

/// Each Route's rollout state, one row per Route in the `rollouts` table,
/// written only by the rollout driver, so that a restarted control plane
/// resumes a rollout where it was.
#[derive(Debug, Clone)]
pub struct RolloutStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl RolloutStore {
    /// Every stored rollout. An unreadable row is skipped with a warning:
    /// its Route then serves what it asks for, as before a rollout.
    pub fn load(&self) -> Result<BTreeMap<ObjectKey, revgate_model::rollout::RouteRollout>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut rollouts = BTreeMap::new();
        let mut unreadable = Vec::new();
        read_table(&txn, ROLLOUTS, &self.path, &mut rollouts, &mut unreadable)?;
        for row in unreadable {
            tracing::warn!(table = %row.table, key = %row.key, error = %row.error, "ignoring an unreadable rollout");
        }
        Ok(rollouts)
    }

    /// Writes the rollouts that changed and removes those of Routes that
    /// are gone, in one transaction.
    pub fn save(
        &self,
        changed: &[(&ObjectKey, &revgate_model::rollout::RouteRollout)],
        gone: &[&ObjectKey],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut table = txn.open_table(ROLLOUTS).map_err(|e| self.db_error(e))?;
            for (route, rollout) in changed {
                let json = serde_json::to_vec(rollout).map_err(|e| self.db_error(e))?;
                table.insert(row_key(route).as_str(), json.as_slice()).map_err(|e| self.db_error(e))?;
            }
            for route in gone {
                table.remove(row_key(route).as_str()).map_err(|e| self.db_error(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_error(e))
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database { path: self.path.clone(), message: e.to_string() }
    }
}

/// The endpoints registered through the admin API, in the same database
/// as the world: written by the runtime that owns registrations
/// (`external`), while the world's [`Store::save`] removes the rows of
/// revisions that are deleted, in the delete's own transaction.
#[derive(Debug, Clone)]
pub struct RegistrationStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl RegistrationStore {
    /// The endpoints registered per revision. Unreadable rows are skipped
    /// with a warning: their revision then starts without endpoints, as
    /// before it was registered.
    pub fn load(&self) -> Result<BTreeMap<ObjectKey, Registration>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut registrations = BTreeMap::new();
        let mut unreadable = Vec::new();
        read_table(&txn, ENDPOINTS, &self.path, &mut registrations, &mut unreadable)?;
        for row in unreadable {
            tracing::warn!(table = %row.table, key = %row.key, error = %row.error, "ignoring unreadable registered endpoints");
        }
        Ok(registrations)
    }

    /// Stores the endpoints registered for `revision` in one transaction.
    pub fn save(&self, revision: &ObjectKey, registration: &Registration) -> Result<(), StoreError> {
        let json = serde_json::to_vec(registration).map_err(|e| self.db_error(e))?;
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut table = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            table.insert(row_key(revision).as_str(), json.as_slice()).map_err(|e| self.db_error(e))?;
        }
        txn.commit().map_err(|e| self.db_error(e))
    }

    /// Removes the endpoints registered for `revisions` in one transaction.
    pub fn remove(&self, revisions: &[ObjectKey]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut table = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            for revision in revisions {
                table.remove(row_key(revision).as_str()).map_err(|e| self.db_error(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_error(e))
    }

    /// Removes, in one transaction, the endpoints registered for revisions
    /// that are not in `world` and have no stored row either, and returns
    /// them. A revision whose row could not be read keeps its endpoints: it
    /// is still stored, and may be read again once its row is fixed.
    pub fn remove_orphans(&self, world: &World) -> Result<Vec<ObjectKey>, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        let mut orphans = Vec::new();
        {
            let revisions = txn.open_table(REVISIONS).map_err(|e| self.db_error(e))?;
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            for row in endpoints.iter().map_err(|e| self.db_error(e))? {
                let (key, _) = row.map_err(|e| self.db_error(e))?;
                // A key that is not namespace/name names no revision; `load` warns of it.
                let Some((namespace, name)) = key.value().split_once('/') else { continue };
                let revision = ObjectKey::new(namespace, name);
                let stored = revisions.get(key.value()).map_err(|e| self.db_error(e))?.is_some();
                if !stored && !world.revisions.contains_key(&revision) {
                    orphans.push(revision);
                }
            }
            for revision in &orphans {
                endpoints.remove(row_key(revision).as_str()).map_err(|e| self.db_error(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_error(e))?;
        Ok(orphans)
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database { path: self.path.clone(), message: e.to_string() }
    }
}

/// A delete that names objects whose stored rows could not be read, made
/// ready for `World::delete`.
#[derive(Debug)]
pub struct UnreadableDelete {
    /// The world without what the unreadable objects owned and could be read.
    pub world: World,
    /// The references naming objects that are in the world.
    pub readable: Vec<Reference>,
    /// What leaves besides what `World::delete` reports.
    pub changes: Vec<Change>,
    /// The rows to remove with the delete.
    pub rows: Vec<UnreadableObject>,
}

/// Plans a delete around unreadable rows, as Knative's owner references
/// would: an object named by `documents` whose row is unreadable leaves
/// with its row, and what it owns leaves with it (a Service's Route and
/// Configuration, a Configuration's revisions) whether readable or not.
/// Revisions are matched by name when their rows cannot be read: Knative
/// names them `<configuration>-…`.
pub fn delete_unreadable(world: &World, unreadable: &[UnreadableObject], references: &[Reference]) -> UnreadableDelete {
    let mut plan =
        UnreadableDelete { world: world.clone(), readable: Vec::new(), changes: Vec::new(), rows: Vec::new() };
    let row_of = |table: &str, key: &ObjectKey| {
        let key = row_key(key);
        unreadable.iter().find(|row| row.table == table && row.key == key).cloned()
    };
    for reference in references {
        let key = reference.key.clone();
        let (table, resource) = match reference.kind {
            ResourceKind::Service => ("services", SERVICE_RESOURCE),
            ResourceKind::Configuration => ("configurations", CONFIGURATION_RESOURCE),
            ResourceKind::Route => ("routes", ROUTE_RESOURCE),
            ResourceKind::ConfigMap => ("configmaps", CONFIG_MAP_RESOURCE),
            ResourceKind::DomainMapping => ("domainmappings", DOMAIN_MAPPING_RESOURCE),
        };
        let Some(own) = row_of(table, &key) else {
            plan.readable.push(reference.clone());
            // A readable owner's readable children leave through
            // `World::delete`; its unreadable ones leave here.
            if let ResourceKind::Service | ResourceKind::Configuration = reference.kind {
                plan.rows.extend(row_of("routes", &key).filter(|_| table == "services"));
                plan.rows.extend(row_of("configurations", &key).filter(|_| table == "services"));
                plan.rows.extend(unreadable_revisions(world, unreadable, &key));
            }
            continue;
        };
        plan.rows.push(own);
        plan.changes.push(Change { resource: resource.to_owned(), key: key.clone(), change: ChangeKind::Deleted });
        let configuration = match reference.kind {
            ResourceKind::Service => {
                let route = ObjectKey::new(key.namespace.clone(), names::service_route(&key.name));
                let owned = |owner: Option<&str>| owner == Some(key.name.as_str());
                if plan.world.routes.get(&route).is_some_and(|r| owned(r.metadata.owner("Service"))) {
                    plan.world.routes.remove(&route);
                    plan.changes.push(deleted(ROUTE_RESOURCE, &route));
                }
                plan.rows.extend(row_of("routes", &route));
                let configuration = ObjectKey::new(key.namespace.clone(), names::service_configuration(&key.name));
                plan.rows.extend(row_of("configurations", &configuration));
                match plan.world.configurations.get(&configuration) {
                    Some(c) if owned(c.metadata.owner("Service")) => Some(configuration),
                    _ => None,
                }
            }
            ResourceKind::Configuration => Some(key.clone()),
            ResourceKind::Route | ResourceKind::ConfigMap | ResourceKind::DomainMapping => None,
        };
        if let Some(configuration) = configuration {
            plan.rows.extend(unreadable_revisions(world, unreadable, &configuration));
            if plan.world.configurations.remove(&configuration).is_some() {
                plan.changes.push(deleted(CONFIGURATION_RESOURCE, &configuration));
            }
            let revisions: Vec<ObjectKey> = plan.world.revisions_of(&configuration).map(|r| r.metadata.key()).collect();
            for revision in revisions {
                plan.world.revisions.remove(&revision);
                plan.changes.push(deleted(REVISION_RESOURCE, &revision));
            }
        }
    }
    plan.rows.sort();
    plan.rows.dedup();
    plan
}

fn deleted(resource: &str, key: &ObjectKey) -> Change {
    Change { resource: resource.to_owned(), key: key.clone(), change: ChangeKind::Deleted }
}

/// Unreadable revision rows named after `configuration` (`<name>-…`), but
/// not after a longer configuration name that shares the prefix.
fn unreadable_revisions(
    world: &World,
    unreadable: &[UnreadableObject],
    configuration: &ObjectKey,
) -> Vec<UnreadableObject> {
    let prefix = format!("{}-", row_key(configuration));
    let longer: Vec<String> = world
        .configurations
        .keys()
        .map(|other| format!("{}-", row_key(other)))
        .filter(|other| other.len() > prefix.len() && other.starts_with(&prefix))
        .collect();
    unreadable
        .iter()
        .filter(|row| row.table == "revisions" && row.key.starts_with(&prefix))
        .filter(|row| !longer.iter().any(|other| row.key.starts_with(other)))
        .cloned()
        .collect()
}

/// Creates `dir` (and missing parents) readable by its owner only. An
/// existing directory is left as it is: it may be one the user shares on
/// purpose; the database file inside is restricted anyway.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir).map_err(|source| StoreError::Permissions { path: dir.to_owned(), source })
}

/// Creates `path` empty and owner-only if it does not exist (redb then
/// initialises it), or tightens the mode of an existing file.
fn restrict_file(path: &Path) -> Result<(), StoreError> {
    let error = |source| StoreError::Permissions { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let file = options.open(path).map_err(error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(error)?.permissions().mode() & 0o777;
        if mode != FILE_MODE {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "restricting the state database to its owner (0600)");
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE)).map_err(error)?;
        }
    }
    #[cfg(not(unix))]
    drop(file);
    Ok(())
}

fn row_key(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

fn read_table<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    path: &Path,
    into: &mut BTreeMap<ObjectKey, T>,
    unreadable: &mut Vec<UnreadableObject>,
) -> Result<(), StoreError> {
    let db_error = |e: &dyn std::fmt::Display| StoreError::Database { path: path.to_owned(), message: e.to_string() };
    let table_name = table.name().to_owned();
    let table = match txn.open_table(table) {
        Ok(table) => table,
        // A fresh database has no tables until the first apply.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(db_error(&e)),
    };
    for row in table.iter().map_err(|e| db_error(&e))? {
        let (key, value) = row.map_err(|e| db_error(&e))?;
        let key = key.value();
        let set_aside = |error: String| UnreadableObject { table: table_name.clone(), key: key.to_owned(), error };
        let Some((namespace, name)) = key.split_once('/') else {
            unreadable.push(set_aside("the key is not namespace/name".to_owned()));
            continue;
        };
        match serde_json::from_slice(value.value()) {
            Ok(object) => {
                into.insert(ObjectKey::new(namespace, name), object);
            }
            Err(e) => unreadable.push(set_aside(e.to_string())),
        }
    }
    for row in unreadable.iter().filter(|row| row.table == table_name) {
        tracing::warn!(file = %path.display(), table = %row.table, key = %row.key, error = %row.error,
            "a stored object cannot be read; serving without it (delete it to remove it)");
    }
    Ok(())
}

fn write_table<T: Serialize + PartialEq>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    previous: &BTreeMap<ObjectKey, T>,
    next: &BTreeMap<ObjectKey, T>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut table = txn.open_table(table)?;
    // Both maps are sorted: walking them side by side costs a comparison
    // per object (a pointer comparison for the objects the worlds share).
    let mut before = previous.iter().peekable();
    for (key, object) in next {
        while let Some((gone, _)) = before.next_if(|(old, _)| *old < key) {
            table.remove(row_key(gone).as_str())?;
        }
        if before.next_if(|(old, _)| *old == key).is_none_or(|(_, old)| old != object) {
            let json = serde_json::to_vec(object)?;
            table.insert(row_key(key).as_str(), json.as_slice())?;
        }
    }
    for (gone, _) in before {
        table.remove(row_key(gone).as_str())?;
    }
    Ok(())
}

fn remove_row(txn: &redb::WriteTransaction, row: &UnreadableObject) -> Result<(), Box<dyn std::error::Error>> {
    let definition = [SERVICES, CONFIGURATIONS, ROUTES, REVISIONS, CONFIG_MAPS]
        .into_iter()
        .find(|table| table.name() == row.table)
        .ok_or_else(|| format!("no table {}", row.table))?;
    txn.open_table(definition)?.remove(row.key.as_str())?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
