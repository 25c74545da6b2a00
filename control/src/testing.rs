//! Fixtures shared by the unit tests of the control plane's tasks.

use revgate_model::plan::ObjectKey;

/// A Service `default/hello` with one container; applied, it creates the
/// revision [`hello_revision`].
pub const HELLO_SERVICE: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: example.com/hello
";

/// `hello` in a second version, split 50/50 with its first, both revisions
/// tagged (`current`, `candidate`).
pub const HELLO_TAGGED_SPLIT: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    spec:
      containers: [{image: example.com/hello, env: [{name: TARGET, value: v2}]}]
  traffic:
    - {revisionName: hello-00001, percent: 50, tag: current}
    - {revisionName: hello-00002, percent: 50, tag: candidate}
";

/// The first revision of [`HELLO_SERVICE`].
pub fn hello_revision() -> ObjectKey {
    ObjectKey::new("default", "hello-00001")
}
