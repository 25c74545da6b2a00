use super::*;

/// Writes `value` as the raw row `key` of `table`, as a damaged or
/// older store might hold it.
pub(crate) fn write_raw_row(state_dir: &Path, table: &str, key: &str, value: &[u8]) {
    let db = Database::create(state_dir.join(STATE_FILE)).expect("opening the store");
    let txn = db.begin_write().expect("write transaction");
    {
        let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        txn.open_table(definition).expect("table").insert(key, value).expect("insert");
    }
    txn.commit().expect("commit");
}

fn config_map(name: &str) -> revgate_model::ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": "knative-serving" },
        "data": { "k": "v" },
    }))
    .expect("a ConfigMap")
}

fn world_with(names: &[&str]) -> World {
    let mut world = World::default();
    for name in names {
        world.config_maps.insert(ObjectKey::new("knative-serving", *name), Arc::new(config_map(name)));
    }
    world
}

#[test]
fn an_unreadable_row_is_set_aside_and_the_rest_loads() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let mut store = Store::open(dir.path()).expect("store");
        store.save(&World::default(), &world_with(&["config-a", "config-b"])).expect("save");
    }
    write_raw_row(dir.path(), "configmaps", "knative-serving/config-b", b"{not json");
    let deep = format!(r#"{{"unknown": {}{}}}"#, "[".repeat(200), "]".repeat(200));
    write_raw_row(dir.path(), "services", "default/deep", deep.as_bytes());
    write_raw_row(dir.path(), "routes", "no-slash", b"{}");

    let mut store = Store::open(dir.path()).expect("store");
    let world = store.load().expect("a store with unreadable rows still loads");
    assert_eq!(world.config_maps.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["config-a"]);
    let rows: Vec<(&str, &str)> = store.unreadable().iter().map(|row| (row.table.as_str(), row.key.as_str())).collect();
    assert_eq!(
        rows,
        [("services", "default/deep"), ("routes", "no-slash"), ("configmaps", "knative-serving/config-b")]
    );
    assert!(store.unreadable()[2].error.contains("line 1"), "the reader's error is kept: {:?}", store.unreadable()[2]);
    let message = store.unreadable()[2].to_string();
    assert!(message.contains("configmaps knative-serving/config-b") && message.contains("delete it"), "{message}");
}

#[test]
fn forgetting_an_unreadable_row_removes_it_with_the_next_save() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_raw_row(dir.path(), "configmaps", "knative-serving/config-b", b"{not json");
    let mut store = Store::open(dir.path()).expect("store");
    let world = store.load().expect("load");
    let rows = store.unreadable().to_vec();
    store.forget_on_save(rows);
    store.save(&world, &world_with(&["config-a"])).expect("save");
    assert!(store.unreadable().is_empty());
    drop(store);

    let mut store = Store::open(dir.path()).expect("store");
    let world = store.load().expect("load");
    assert!(store.unreadable().is_empty(), "{:?}", store.unreadable());
    assert_eq!(world.config_maps.len(), 1);
}

#[test]
fn registrations_survive_a_reopen_and_leave_with_their_revision() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revision = ObjectKey::new("default", "hello-00001");
    let registration =
        Registration { endpoints: vec![Endpoint { host: "127.0.0.1".into(), port: 8081 }], registered_at: 42 };
    {
        let store = Store::open(dir.path()).expect("store");
        store.registrations().save(&revision, &registration).expect("save");
    }
    let mut store = Store::open(dir.path()).expect("store");
    assert_eq!(store.registrations().load().expect("read").get(&revision), Some(&registration));

    // A world that had the revision and no longer has it drops its endpoints.
    let mut previous = World::default();
    let revision_object: revgate_model::Revision = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": { "name": "hello-00001", "namespace": "default" },
        "spec": { "containers": [{ "image": "example.com/hello" }] },
    }))
    .expect("a Revision");
    previous.revisions.insert(revision.clone(), Arc::new(revision_object));
    store.save(&previous, &World::default()).expect("save");
    assert!(store.registrations().load().expect("read").is_empty());
}

fn references(file: &str, text: &str) -> Vec<Reference> {
    let mut budget = revgate_model::decode::Budget::default();
    revgate_model::parse_references(file, text, &mut budget, revgate_model::OtherKinds::Reject)
        .expect("manifest")
        .objects
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: example.com/{name}\n"
    )
}

fn unreadable(table: &str, key: &str) -> UnreadableObject {
    UnreadableObject { table: table.into(), key: key.into(), error: "expected value".into() }
}

#[test]
fn deleting_an_unreadable_service_takes_what_it_owns_and_nothing_else() {
    let documents = revgate_model::parse_documents("all.yaml", &(service("hello") + "---\n" + &service("hello-world")))
        .expect("manifests");
    let (mut world, _) = World::default().apply(&documents, 0).expect("apply");
    // As loaded from a store whose Service and revision rows of `hello`
    // and one revision row of `hello-world` cannot be read.
    world.services.remove(&ObjectKey::new("default", "hello"));
    world.revisions.remove(&ObjectKey::new("default", "hello-00001"));
    world.revisions.remove(&ObjectKey::new("default", "hello-world-00001"));
    let rows = [
        unreadable("services", "default/hello"),
        unreadable("revisions", "default/hello-00001"),
        unreadable("revisions", "default/hello-world-00001"),
    ];

    let delete = references("hello.yaml", &service("hello"));
    let plan = delete_unreadable(&world, &rows, &delete);
    assert!(plan.readable.is_empty(), "nothing left for World::delete");
    assert_eq!(plan.rows, [rows[1].clone(), rows[0].clone()], "hello-world's revision stays");
    let changes: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        [
            "service.serving.knative.dev/hello deleted",
            "route.serving.knative.dev/hello deleted",
            "configuration.serving.knative.dev/hello deleted"
        ]
    );
    assert!(!plan.world.routes.contains_key(&ObjectKey::new("default", "hello")));
    assert!(plan.world.configurations.contains_key(&ObjectKey::new("default", "hello-world")));

    // Deleting the readable `hello-world` takes its unreadable revision row.
    let delete = references("w.yaml", &service("hello-world"));
    let plan = delete_unreadable(&world, &rows, &delete);
    assert_eq!(plan.readable.len(), 1);
    assert_eq!(plan.rows, [rows[2].clone()]);
}

#[cfg(unix)]
#[test]
fn the_state_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    let parent = tempfile::tempdir().expect("temporary directory");
    let dir = parent.path().join("state");
    drop(Store::open(&dir).expect("store"));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);

    // A database left world-readable by an earlier version is tightened.
    std::fs::set_permissions(dir.join(STATE_FILE), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(Store::open(&dir).expect("store"));
    assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
}
