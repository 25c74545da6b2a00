//! What to run for a revision, decided once from its spec and the image map.
//!
//! Kubernetes semantics, with the image map standing in for the image:
//!
//! | container | argv |
//! |---|---|
//! | `command` given | `command` + `args` (the image map is not consulted) |
//! | no `command`, image mapped | mapped argv + `args` |
//! | no `command`, image not mapped | nothing runs: `ImageNotMapped` |
//!
//! `$(VAR)` in `command`, `args` and `env` values is replaced by the
//! variable's value as the kubelet does (`$$` escapes a `$`; unknown
//! variables stay as written), so `args: ["--port=$(PORT)"]` works.

use revgate_model::resources::Container;

use crate::images::ImageMap;
use crate::probe::ProbeSpec;
use crate::{Workload, reason};

/// The variables the runtime sets itself; a container cannot override them
/// (Knative reserves them too), or the runtime would probe the wrong port.
const RESERVED: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

/// How to start any instance of one revision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Launch {
    /// Program and arguments, before `$(VAR)` expansion.
    argv: Vec<String>,
    /// `K_SERVICE` (when owned by a Service), `K_CONFIGURATION`, `K_REVISION`.
    knative: Vec<(&'static str, String)>,
    /// The container's own variables, in order, before expansion.
    env: Vec<(String, String)>,
    /// Variables revgate itself may have but the instance must not inherit.
    pub(crate) unset: Vec<&'static str>,
    pub(crate) probe: ProbeSpec,
    /// Things in the spec that were ignored, worth a log line.
    pub(crate) warnings: Vec<String>,
}

/// Why a revision cannot run at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotRunnable {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// Decides how instances of `workload` start.
pub(crate) fn plan(workload: &Workload, images: &ImageMap) -> Result<Launch, NotRunnable> {
    let key = &workload.key;
    let Some(container) = workload.spec.serving_container() else {
        return Err(NotRunnable {
            reason: reason::CONTAINER_MISSING,
            message: format!("revision {key} has no container to run; add one under spec.template.spec.containers"),
        });
    };
    let argv = argv(container, images).ok_or_else(|| NotRunnable {
        reason: reason::IMAGE_NOT_MAPPED,
        message: format!(
            "revision {key}: image {image:?} is not in the image map, so there is no program to run; map it to a local \
             program in the file given with --images FILE (e.g. `{image}: ./path/to/program`), or give the container \
             a `command`",
            image = container.image,
        ),
    })?;

    let mut warnings = Vec::new();
    let mut env = Vec::with_capacity(container.env.len());
    for var in &container.env {
        if var.value_from.is_some() {
            return Err(NotRunnable {
                reason: reason::UNSUPPORTED_ENV,
                message: format!(
                    "revision {key}: env variable {:?} uses valueFrom, which has no source without Kubernetes; \
                     give it a literal `value` instead",
                    var.name
                ),
            });
        }
        if RESERVED.contains(&var.name.as_str()) {
            warnings.push(format!("env variable {} is set by the runtime; the container's value is ignored", var.name));
            continue;
        }
        env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
    }

    let mut knative = Vec::with_capacity(3);
    let mut unset = Vec::new();
    match &workload.service {
        Some(service) => knative.push(("K_SERVICE", service.clone())),
        None => unset.push("K_SERVICE"),
    }
    knative.push(("K_CONFIGURATION", workload.configuration.clone()));
    knative.push(("K_REVISION", key.name.clone()));

    let port = container.ports.first().and_then(|p| p.container_port);
    let (probe, probe_warnings) = ProbeSpec::parse(container.readiness_probe.as_ref(), port);
    warnings.extend(probe_warnings);
    if workload.spec.containers.len() > 1 {
        warnings.push(format!(
            "only the serving container {:?} runs; the other {} container(s) are not started",
            container.name,
            workload.spec.containers.len() - 1
        ));
    }
    Ok(Launch { argv, knative, env, unset, probe, warnings })
}

fn argv(container: &Container, images: &ImageMap) -> Option<Vec<String>> {
    let entrypoint = if container.command.is_empty() {
        images.resolve(&container.image)?.to_vec()
    } else {
        container.command.clone()
    };
    Some(entrypoint.into_iter().chain(container.args.iter().cloned()).collect())
}

impl Launch {
    /// The variables of an instance listening on `port`, in the order they are
    /// set (later ones may refer to earlier ones with `$(VAR)`).
    pub(crate) fn environment(&self, port: u16) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::with_capacity(1 + self.knative.len() + self.env.len());
        vars.push(("PORT".to_string(), port.to_string()));
        vars.extend(self.knative.iter().map(|(name, value)| (name.to_string(), value.clone())));
        for (name, value) in &self.env {
            let expanded = expand(value, |wanted| lookup(&vars, wanted));
            vars.push((name.clone(), expanded));
        }
        vars
    }

    /// The program and arguments, with `$(VAR)` expanded from `environment`.
    pub(crate) fn argv(&self, environment: &[(String, String)]) -> Vec<String> {
        self.argv.iter().map(|arg| expand(arg, |wanted| lookup(environment, wanted))).collect()
    }
}

/// The last definition wins, as in a process environment.
fn lookup<'a>(vars: &'a [(String, String)], wanted: &str) -> Option<&'a str> {
    vars.iter().rev().find(|(name, _)| name == wanted).map(|(_, value)| value.as_str())
}

/// The kubelet's `$(VAR)` expansion.
fn expand<'a>(template: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
            continue;
        }
        if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
            && let Some(value) = lookup(&reference[..end])
        {
            out.push_str(value);
            rest = &reference[end + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use revgate_model::plan::ObjectKey;
    use revgate_model::resources::{ContainerPort, EnvVar, RevisionSpec};

    use super::*;

    fn workload(container: Container) -> Workload {
        Workload {
            key: ObjectKey::new("default", "hello-00001"),
            service: Some("hello".to_string()),
            configuration: "hello".to_string(),
            spec: RevisionSpec { containers: vec![container], ..RevisionSpec::default() },
        }
    }

    fn container(image: &str) -> Container {
        Container { image: image.to_string(), ..Container::default() }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.to_string(), value: Some(value.to_string()), value_from: None }
    }

    fn images() -> ImageMap {
        ImageMap::parse("ghcr.io/knative/helloworld-go: [/bin/hello, --default]", Path::new("/")).expect("valid")
    }

    #[test]
    fn command_replaces_the_mapped_entrypoint_and_args_are_appended() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            // (command, args, argv)
            (&[], &[], &["/bin/hello", "--default"]),
            (&[], &["--verbose"], &["/bin/hello", "--default", "--verbose"]),
            (&["python3", "app.py"], &[], &["python3", "app.py"]),
            (&["python3"], &["app.py"], &["python3", "app.py"]),
        ];
        for (command, args, want) in cases {
            let mut c = container("ghcr.io/knative/helloworld-go:latest");
            c.command = command.iter().map(ToString::to_string).collect();
            c.args = args.iter().map(ToString::to_string).collect();
            let launch = plan(&workload(c), &images()).expect("runnable");
            assert_eq!(launch.argv(&launch.environment(1234)), *want, "command {command:?} args {args:?}");
        }

        let mut unmapped = container("example.com/unmapped:v1");
        unmapped.command = vec!["./server".to_string()];
        assert!(plan(&workload(unmapped), &ImageMap::empty()).is_ok(), "a command needs no mapping");
    }

    #[test]
    fn unmapped_images_and_value_from_cannot_run() {
        let err = plan(&workload(container("example.com/unmapped:v1")), &images()).expect_err("unmapped");
        assert_eq!(err.reason, "ImageNotMapped");
        for part in ["default/hello-00001", "\"example.com/unmapped:v1\"", "--images FILE", "command"] {
            assert!(err.message.contains(part), "{part} missing in {}", err.message);
        }

        let mut c = container("ghcr.io/knative/helloworld-go");
        c.env = vec![EnvVar { name: "SECRET".to_string(), value: None, value_from: Some(serde_json::json!({})) }];
        let err = plan(&workload(c), &images()).expect_err("valueFrom");
        assert_eq!(err.reason, "UnsupportedEnv");
        assert!(err.message.contains("\"SECRET\"") && err.message.contains("default/hello-00001"), "{}", err.message);

        let mut empty = workload(container("x"));
        empty.spec.containers.clear();
        assert_eq!(plan(&empty, &images()).expect_err("no container").reason, "ContainerMissing");
    }

    #[test]
    fn environment_is_port_then_knative_then_container_with_expansion() {
        let mut c = container("ghcr.io/knative/helloworld-go");
        c.env = vec![env("TARGET", "v1"), env("PORT", "80"), env("URL", "http://127.0.0.1:$(PORT)/$(TARGET)")];
        c.args = vec!["--listen=:$(PORT)".to_string(), "$$(PORT)".to_string(), "$(NOPE)".to_string(), "$".to_string()];
        let launch = plan(&workload(c), &images()).expect("runnable");
        assert_eq!(launch.warnings.len(), 1, "{:?}", launch.warnings);
        let vars = launch.environment(4321);
        let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            shown,
            [
                "PORT=4321",
                "K_SERVICE=hello",
                "K_CONFIGURATION=hello",
                "K_REVISION=hello-00001",
                "TARGET=v1",
                "URL=http://127.0.0.1:4321/v1"
            ]
        );
        assert_eq!(launch.argv(&vars), ["/bin/hello", "--default", "--listen=:4321", "$(PORT)", "$(NOPE)", "$"]);

        let mut standalone = workload(container("ghcr.io/knative/helloworld-go"));
        standalone.service = None;
        let launch = plan(&standalone, &images()).expect("runnable");
        assert!(launch.environment(1).iter().all(|(k, _)| k != "K_SERVICE"));
        assert_eq!(launch.unset, ["K_SERVICE"]);
    }

    #[test]
    fn the_serving_container_is_the_one_with_a_port() {
        let mut w = workload(container("sidecar"));
        let mut serving = container("ghcr.io/knative/helloworld-go");
        serving.ports = vec![ContainerPort { container_port: Some(8080), ..ContainerPort::default() }];
        w.spec.containers.push(serving);
        let launch = plan(&w, &images()).expect("the serving container is mapped");
        assert_eq!(launch.argv(&[]), ["/bin/hello", "--default"]);
        assert!(launch.warnings.iter().any(|w| w.contains("not started")), "{:?}", launch.warnings);
    }
}
