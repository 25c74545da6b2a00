//! Defaulting and validation, in that order, as Knative's admission webhooks
//! do: a manifest is first completed with defaults from `config-defaults`,
//! then checked. Each check yields a `(field path, message)` pair; the world
//! attaches file and object.

use std::collections::{BTreeMap, BTreeSet};

use crate::autoscaling;
use crate::config::Settings;
use crate::error::Problems;
use crate::meta::{ENDPOINTS_ANNOTATION, ObjectMeta};
use crate::names::{self, RouteNaming};
use crate::plan::parse_endpoints;
use crate::resources::{RevisionTemplate, TrafficTarget};

/// Name Knative gives a container that has none (`user-container-<i>` when several).
pub const DEFAULT_CONTAINER_NAME: &str = "user-container";

fn push(problems: &mut Problems, path: impl Into<String>, message: impl Into<String>) {
    problems.push((path.into(), message.into()));
}

// ----- defaulting -------------------------------------------------------------

/// Fills in what Knative's defaulting fills in: container names and the
/// timeouts and concurrency from `config-defaults`.
pub fn default_template(template: &mut RevisionTemplate, settings: &Settings) {
    let d = &settings.defaults;
    let spec = &mut template.spec;
    let several = spec.containers.len() > 1;
    for (i, c) in spec.containers.iter_mut().enumerate() {
        if c.name.is_empty() {
            c.name = if several { format!("{DEFAULT_CONTAINER_NAME}-{i}") } else { DEFAULT_CONTAINER_NAME.to_string() };
        }
    }
    spec.container_concurrency.get_or_insert(d.container_concurrency);
    let timeout = *spec.timeout_seconds.get_or_insert(d.revision_timeout_seconds);
    spec.response_start_timeout_seconds.get_or_insert(d.revision_response_start_timeout_seconds.min(timeout.max(0)));
    spec.idle_timeout_seconds.get_or_insert(d.revision_idle_timeout_seconds);
    if template.metadata.name.as_deref() == Some("") {
        template.metadata.name = None;
    }
}

/// Normalises traffic targets: empty strings are absent, and `latestRevision`
/// defaults to whether no `revisionName` is given. A Service without traffic
/// sends everything to its latest revision.
pub fn default_traffic(traffic: &mut Vec<TrafficTarget>, in_service: bool) {
    if in_service && traffic.is_empty() {
        traffic.push(TrafficTarget { latest_revision: Some(true), percent: Some(100), ..Default::default() });
    }
    for t in traffic.iter_mut() {
        for field in [&mut t.tag, &mut t.revision_name, &mut t.configuration_name, &mut t.url] {
            if field.as_deref() == Some("") {
                *field = None;
            }
        }
        t.latest_revision.get_or_insert(t.revision_name.is_none());
    }
}

// ----- validation -------------------------------------------------------------

/// A DNS-1035 label: what Knative requires of object names.
pub fn check_dns1035(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= names::MAX_NAME_LENGTH
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last().is_some_and(|b| *b != b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS-1035 label: at most 63 lowercase letters, digits or '-', \
             starting with a letter and not ending with '-'"
        ))
    }
}

/// A DNS-1123 label: what Kubernetes requires of namespaces and container names.
pub fn check_dns1123(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= names::MAX_NAME_LENGTH
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS-1123 label: at most 63 lowercase letters, digits or '-', \
             not starting or ending with '-'"
        ))
    }
}

/// A DNS-1123 subdomain: what Kubernetes requires of most object names,
/// ConfigMaps' among them: at most 253 characters, dot-separated DNS-1123 labels.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// `metadata` of a Service, Configuration or Route: the name, the
/// namespace, and no autoscaling annotations (they belong on the template).
pub fn validate_metadata(meta: &ObjectMeta, problems: &mut Problems) {
    if let Err(e) = check_dns1035(&meta.name) {
        push(problems, "metadata.name", e);
    }
    if let Err(e) = check_dns1123(&meta.namespace) {
        push(problems, "metadata.namespace", e);
    }
    problems.extend(autoscaling::validate_no_annotations(&meta.annotations, "metadata.annotations"));
    problems.extend(crate::rollout::annotations::validate(&meta.annotations, "metadata.annotations"));
}

/// `spec.template` of a Service or Configuration named `owner`.
pub fn validate_template(template: &RevisionTemplate, owner: &str, settings: &Settings, problems: &mut Problems) {
    const META: &str = "spec.template.metadata";
    const SPEC: &str = "spec.template.spec";
    if let Some(name) = &template.metadata.name {
        if let Err(e) = check_dns1035(name) {
            push(problems, format!("{META}.name"), e);
        } else if !name.starts_with(&format!("{owner}-")) {
            push(problems, format!("{META}.name"), format!("{name:?} must start with \"{owner}-\""));
        }
    }
    if let Some(value) = template.metadata.annotations.get(ENDPOINTS_ANNOTATION)
        && let Err(e) = parse_endpoints(value)
    {
        push(problems, format!("{META}.annotations[{ENDPOINTS_ANNOTATION}]"), e);
    }
    problems.extend(autoscaling::validate_annotations(
        &template.metadata.annotations,
        &settings.autoscaler,
        &format!("{META}.annotations"),
    ));

    let spec = &template.spec;
    if spec.containers.is_empty() {
        push(problems, format!("{SPEC}.containers"), "at least one container is required");
    }
    let mut seen_names = BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let at = format!("{SPEC}.containers[{i}]");
        if c.image.trim().is_empty() {
            push(problems, format!("{at}.image"), "missing field: every container needs an image");
        }
        if let Err(e) = check_dns1123(&c.name) {
            push(problems, format!("{at}.name"), e);
        } else if !seen_names.insert(c.name.as_str()) {
            push(problems, format!("{at}.name"), format!("duplicate container name {:?}", c.name));
        }
        for (j, env) in c.env.iter().enumerate() {
            if env.name.is_empty() {
                push(problems, format!("{at}.env[{j}].name"), "missing field: every variable needs a name");
            }
        }
        if c.ports.len() > 1 {
            push(problems, format!("{at}.ports"), "at most one port may be given: it is where requests are sent");
        }
        for (j, port) in c.ports.iter().enumerate() {
            let at = format!("{at}.ports[{j}]");
            match port.container_port {
                Some(p) if !(1..=65535).contains(&p) => {
                    push(problems, format!("{at}.containerPort"), format!("expected 1 <= {p} <= 65535"))
                }
                _ => {}
            }
            if !matches!(port.name.as_str(), "" | "http1" | "h2c") {
                push(
                    problems,
                    format!("{at}.name"),
                    format!("{:?} is not a protocol: use \"http1\" or \"h2c\"", port.name),
                );
            }
            if let Some(protocol) = &port.protocol
                && protocol != "TCP"
            {
                push(problems, format!("{at}.protocol"), format!("only TCP is supported, got {protocol:?}"));
            }
        }
    }
    if spec.containers.len() > 1 {
        let with_ports: Vec<usize> =
            spec.containers.iter().enumerate().filter(|(_, c)| !c.ports.is_empty()).map(|(i, _)| i).collect();
        match with_ports.as_slice() {
            [_] => {}
            [] => push(
                problems,
                format!("{SPEC}.containers"),
                "with several containers, exactly one must declare a port (the one that receives requests)",
            ),
            several => push(
                problems,
                format!("{SPEC}.containers"),
                format!("with several containers, exactly one must declare a port; containers {several:?} all do"),
            ),
        }
    }

    let d = &settings.defaults;
    if let Some(cc) = spec.container_concurrency
        && !(0..=d.container_concurrency_max_limit).contains(&cc)
    {
        push(
            problems,
            format!("{SPEC}.containerConcurrency"),
            format!("expected 0 <= {cc} <= {}", d.container_concurrency_max_limit),
        );
    }
    let max = d.max_revision_timeout_seconds;
    if let Some(t) = spec.timeout_seconds
        && !(1..=max).contains(&t)
    {
        push(problems, format!("{SPEC}.timeoutSeconds"), format!("expected 1 <= {t} <= {max}"));
    }
    if let Some(t) = spec.response_start_timeout_seconds {
        let limit = spec.timeout_seconds.unwrap_or(max);
        if !(0..=limit).contains(&t) {
            push(
                problems,
                format!("{SPEC}.responseStartTimeoutSeconds"),
                format!("expected 0 <= {t} <= {limit} (timeoutSeconds)"),
            );
        }
    }
    if let Some(t) = spec.idle_timeout_seconds
        && !(0..=max).contains(&t)
    {
        push(problems, format!("{SPEC}.idleTimeoutSeconds"), format!("expected 0 <= {t} <= {max}"));
    }
}

/// A changed template must carry a new name if it carries one at all:
/// revisions are immutable, so the old name cannot describe the new template.
pub fn validate_template_update(old: &RevisionTemplate, new: &RevisionTemplate, problems: &mut Problems) {
    if let Some(name) = &new.metadata.name
        && old.metadata.name.as_ref() == Some(name)
        && old != new
    {
        push(
            problems,
            "spec.template.metadata.name",
            format!(
                "the template changed but its name {name:?} did not; revisions are immutable, so give the \
                 changed template a new name (or remove the name to let revgate number revisions)"
            ),
        );
    }
}

/// `spec.traffic` of a Route (or Service, `in_service`), after defaulting.
pub fn validate_traffic(
    traffic: &[TrafficTarget],
    in_service: bool,
    route: RouteNaming<'_>,
    settings: &Settings,
    problems: &mut Problems,
) {
    if traffic.is_empty() {
        push(problems, "spec.traffic", "at least one traffic target is required");
        return;
    }
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum = 0i64;
    for (i, t) in traffic.iter().enumerate() {
        let at = format!("spec.traffic[{i}]");
        if t.url.is_some() {
            push(problems, format!("{at}.url"), "must not be set: the URL is reported in status");
        }
        match (&t.revision_name, &t.configuration_name) {
            (Some(_), Some(_)) => push(
                problems,
                at.clone(),
                "revisionName and configurationName are mutually exclusive; give exactly one",
            ),
            (None, None) if !in_service => {
                push(problems, at.clone(), "one of revisionName or configurationName is required")
            }
            _ => {}
        }
        if in_service && t.configuration_name.is_some() {
            push(
                problems,
                format!("{at}.configurationName"),
                "not allowed in a Service: use revisionName, or latestRevision: true for the Service's own revisions",
            );
        }
        match (t.revision_name.is_some(), t.latest_revision) {
            (true, Some(true)) => {
                push(problems, format!("{at}.latestRevision"), "must be false when revisionName is set")
            }
            (false, Some(false)) => {
                push(problems, format!("{at}.latestRevision"), "must be true when revisionName is not set")
            }
            _ => {}
        }
        if let Some(name) = &t.revision_name
            && let Err(e) = check_dns1035(name)
        {
            push(problems, format!("{at}.revisionName"), e);
        }
        if let Some(name) = &t.configuration_name
            && let Err(e) = check_dns1035(name)
        {
            push(problems, format!("{at}.configurationName"), e);
        }
        let percent = t.percent.unwrap_or(0);
        if !(0..=100).contains(&percent) {
            push(problems, format!("{at}.percent"), format!("expected 0 <= {percent} <= 100"));
        }
        sum += percent;
        if let Some(tag) = &t.tag {
            if let Err(e) = check_dns1035(tag) {
                push(problems, format!("{at}.tag"), e);
            } else if let Some(first) = tags.insert(tag, i) {
                push(problems, format!("{at}.tag"), format!("duplicate tag {tag:?} (also in spec.traffic[{first}])"));
            } else {
                let host = names::tag_host(route, tag, settings);
                if host.split('.').any(|label| label.len() > names::MAX_NAME_LENGTH) {
                    push(
                        problems,
                        format!("{at}.tag"),
                        format!("the tag's host {host:?} has a part longer than 63 characters; use a shorter tag"),
                    );
                }
            }
        }
    }
    if sum != 100 {
        push(problems, "spec.traffic", format!("traffic percentages sum to {sum}, must be 100"));
    }
}
