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

/// The first revision of [`HELLO_SERVICE`].
pub fn hello_revision() -> ObjectKey {
    ObjectKey::new("default", "hello-00001")
}
