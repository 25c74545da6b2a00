//! Standalone state: the applied world in an embedded, crash-safe database.
//!
//! Every object lives in a redb table of its kind, keyed `namespace/name`, as
//! JSON. An apply is one write transaction, so a crash leaves either the old
//! world or the new one, never a mix. The store is written only by the
//! control plane's single owner of the world (see `control.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use revgate_model::World;
use revgate_model::plan::ObjectKey;
use serde::Serialize;
use serde::de::DeserializeOwned;

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const CONFIGURATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("configurations");
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revisions");
const CONFIG_MAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("configmaps");

/// Errors of the state store; each says which file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening state database {path}: {source} (is another `revgate serve` using this state directory?)")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("state database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("state database {path}: object {key} in table {table} is not valid JSON: {source}")]
    Corrupt { path: PathBuf, table: String, key: String, source: serde_json::Error },
}

/// The world, persisted.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `state.redb` inside `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join("state.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Ok(Self { db, path })
    }

    /// Reads the whole world.
    pub fn load(&self) -> Result<World, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut world = World::default();
        read_table(&txn, SERVICES, &self.path, &mut world.services)?;
        read_table(&txn, CONFIGURATIONS, &self.path, &mut world.configurations)?;
        read_table(&txn, ROUTES, &self.path, &mut world.routes)?;
        read_table(&txn, REVISIONS, &self.path, &mut world.revisions)?;
        read_table(&txn, CONFIG_MAPS, &self.path, &mut world.config_maps)?;
        Ok(world)
    }

    /// Replaces the stored world by `world` in one transaction, writing only
    /// the objects that differ from `previous`.
    pub fn save(&self, previous: &World, world: &World) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        write_table(&txn, SERVICES, &previous.services, &world.services).map_err(|e| self.db_error(e))?;
        write_table(&txn, CONFIGURATIONS, &previous.configurations, &world.configurations)
            .map_err(|e| self.db_error(e))?;
        write_table(&txn, ROUTES, &previous.routes, &world.routes).map_err(|e| self.db_error(e))?;
        write_table(&txn, REVISIONS, &previous.revisions, &world.revisions).map_err(|e| self.db_error(e))?;
        write_table(&txn, CONFIG_MAPS, &previous.config_maps, &world.config_maps).map_err(|e| self.db_error(e))?;
        txn.commit().map_err(|e| self.db_error(e))
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database { path: self.path.clone(), message: e.to_string() }
    }
}

fn row_key(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

fn read_table<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    path: &Path,
    into: &mut BTreeMap<ObjectKey, T>,
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
        let Some((namespace, name)) = key.split_once('/') else {
            return Err(db_error(&format!("malformed key {key:?}")));
        };
        let object = serde_json::from_slice(value.value()).map_err(|source| StoreError::Corrupt {
            path: path.to_owned(),
            table: table_name.clone(),
            key: key.to_owned(),
            source,
        })?;
        into.insert(ObjectKey::new(namespace, name), object);
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
    for key in previous.keys().filter(|key| !next.contains_key(key)) {
        table.remove(row_key(key).as_str())?;
    }
    for (key, object) in next {
        if previous.get(key) != Some(object) {
            let json = serde_json::to_vec(object)?;
            table.insert(row_key(key).as_str(), json.as_slice())?;
        }
    }
    Ok(())
}
