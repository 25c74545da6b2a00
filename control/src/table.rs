//! `kubectl get`-shaped tables.
//!
//! Columns are the `additionalPrinterColumns` of Knative's CRDs (same names,
//! same JSON paths), so `revgate get ksvc` reads like `kubectl get ksvc`.

use serde_json::Value;

use crate::cli::GetKind;

/// How to read one column from an object.
#[derive(Debug, Clone, Copy)]
enum Column {
    /// A dotted path below the object root.
    Path(&'static [&'static str]),
    /// A metadata label.
    Label(&'static str),
    /// A metadata annotation.
    Annotation(&'static str),
    /// A field of the condition of the given type.
    Condition(&'static str, &'static str),
    /// A number at a dotted path, rounded for reading (see [`number`]).
    Number(&'static [&'static str]),
    /// A Route's traffic targets (see [`traffic`]).
    Traffic,
}

fn columns(kind: GetKind) -> &'static [(&'static str, Column)] {
    const READY: Column = Column::Condition("Ready", "status");
    const REASON: Column = Column::Condition("Ready", "reason");
    match kind {
        GetKind::Service => &[
            ("URL", Column::Path(&["status", "url"])),
            ("LATESTCREATED", Column::Path(&["status", "latestCreatedRevisionName"])),
            ("LATESTREADY", Column::Path(&["status", "latestReadyRevisionName"])),
            ("READY", READY),
            ("REASON", REASON),
        ],
        GetKind::Configuration => &[
            ("LATESTCREATED", Column::Path(&["status", "latestCreatedRevisionName"])),
            ("LATESTREADY", Column::Path(&["status", "latestReadyRevisionName"])),
            ("READY", READY),
            ("REASON", REASON),
        ],
        GetKind::Route => &[
            ("URL", Column::Path(&["status", "url"])),
            ("TRAFFIC", Column::Traffic),
            ("READY", READY),
            ("REASON", REASON),
            ("ROLLOUT", Column::Annotation(crate::rollout::ROLLOUT_SUMMARY_ANNOTATION)),
        ],
        GetKind::Revision => &[
            ("CONFIG NAME", Column::Label("serving.knative.dev/configuration")),
            ("GENERATION", Column::Label("serving.knative.dev/configurationGeneration")),
            ("READY", READY),
            ("REASON", REASON),
            ("ACTUAL REPLICAS", Column::Path(&["status", "actualReplicas"])),
            ("DESIRED REPLICAS", Column::Path(&["status", "desiredReplicas"])),
        ],
        GetKind::Domainmapping => &[("URL", Column::Path(&["status", "url"])), ("READY", READY), ("REASON", REASON)],
        GetKind::Activity => &[
            ("CONCURRENCY", Column::Number(&["concurrency"])),
            ("HELD", Column::Path(&["held"])),
            ("RPS", Column::Number(&["rps"])),
            ("5XX", Column::Path(&["responses_5xx"])),
            ("P99MS", Column::Number(&["p99_ms"])),
            ("ACTIVATIONS", Column::Path(&["activations"])),
            ("REPORTERS", Column::Path(&["reporters"])),
        ],
        // Knative's printer columns for PodAutoscaler and ServerlessService;
        // SKS shows the gateway's endpoints and held requests where Knative
        // shows activators and Kubernetes services.
        GetKind::Kpa => &[
            ("DESIREDSCALE", Column::Path(&["status", "desiredScale"])),
            ("ACTUALSCALE", Column::Path(&["status", "actualScale"])),
            ("READY", READY),
            ("REASON", REASON),
        ],
        GetKind::Sks => &[
            ("MODE", Column::Path(&["spec", "mode"])),
            ("ENDPOINTS", Column::Path(&["status", "endpoints"])),
            ("HELD", Column::Path(&["status", "heldRequests"])),
            ("READY", READY),
            ("REASON", REASON),
        ],
        GetKind::Gateway => &[],
    }
}

fn cell(object: &Value, column: Column) -> String {
    let value = match column {
        Column::Number(path) => {
            return path.iter().try_fold(object, |v, key| v.get(key)).map(number).unwrap_or_default();
        }
        Column::Traffic => return traffic(object),
        Column::Path(path) => path.iter().try_fold(object, |v, key| v.get(key)),
        Column::Label(label) => object.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.get(label)),
        Column::Annotation(key) => object.get("metadata").and_then(|m| m.get("annotations")).and_then(|a| a.get(key)),
        Column::Condition(kind, field) => object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind)))
            .and_then(|c| c.get(field)),
    };
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A figure as a person reads it: whole numbers as they are, others with
/// two decimals (`14.957126622131607` → `14.96`), tiny ones as `0`.
fn number(value: &Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 => format!("{n:.0}"),
        Some(n) => {
            let rounded = format!("{n:.2}");
            if rounded.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') { "0".to_owned() } else { rounded }
        }
        None => match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
    }
}

/// A Route's split, one target after another as `kn route describe` lists
/// them: percent, revision (or `@latest` for a target that follows the
/// latest ready revision before it is resolved) and `#tag`. The resolved
/// `status.traffic` when there is one, else `spec.traffic`.
fn traffic(route: &Value) -> String {
    let targets = route
        .pointer("/status/traffic")
        .and_then(Value::as_array)
        .filter(|targets| !targets.is_empty())
        .or_else(|| route.pointer("/spec/traffic").and_then(Value::as_array));
    let Some(targets) = targets else { return String::new() };
    targets
        .iter()
        .map(|target| {
            let percent = target.get("percent").and_then(Value::as_u64).unwrap_or(0);
            let revision = target.get("revisionName").and_then(Value::as_str).map_or_else(
                || {
                    target
                        .get("configurationName")
                        .and_then(Value::as_str)
                        .map_or("@latest".to_owned(), |c| format!("{c}@latest"))
                },
                ToOwned::to_owned,
            );
            match target.get("tag").and_then(Value::as_str) {
                Some(tag) => format!("{percent}% {revision} #{tag}"),
                None => format!("{percent}% {revision}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders Knative objects as a table.
pub fn objects(kind: GetKind, objects: &[Value], with_namespace: bool) -> String {
    let mut header: Vec<&str> = Vec::new();
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    header.extend(columns(kind).iter().map(|(name, _)| *name));
    let rows = objects.iter().map(|object| {
        let mut row = Vec::new();
        if with_namespace {
            row.push(cell(object, Column::Path(&["metadata", "namespace"])));
        }
        row.push(cell(object, Column::Path(&["metadata", "name"])));
        row.extend(columns(kind).iter().map(|(_, column)| cell(object, *column)));
        row
    });
    render(&header, rows)
}

/// Renders the gateway status (`/v1/gateway`) as one row per connected node.
pub fn gateway(view: &Value) -> String {
    let header = ["NODE", "CONNECTED", "API", "CDS", "EDS", "LDS", "RDS", "FILTERS IN SYNC", "ERROR"];
    let published = view.pointer("/published/versions");
    let mut rows = Vec::new();
    if let Some(nodes) = view.pointer("/status/nodes").and_then(Value::as_object) {
        for (node, status) in nodes {
            let mut row =
                vec![node.clone(), cell(status, Column::Path(&["connected"])), cell(status, Column::Path(&["api"]))];
            let mut error = String::new();
            for kind in ["CDS", "EDS", "LDS", "RDS"] {
                let current = published.and_then(|p| p.get(kind)).and_then(Value::as_str).unwrap_or_default();
                let type_status = status.pointer(&format!("/types/{kind}"));
                let acked = type_status.and_then(|t| t.get("acked_version")).and_then(Value::as_str);
                let nack = type_status.and_then(|t| t.get("nack")).filter(|n| !n.is_null());
                let state = match (nack, acked) {
                    (Some(nack), _) => {
                        if error.is_empty() {
                            error = format!("{kind}: {}", cell(nack, Column::Path(&["message"])));
                        }
                        "NACK".to_owned()
                    }
                    (None, Some(v)) if v == current => "ACK".to_owned(),
                    (None, Some(_)) => "STALE".to_owned(),
                    (None, None) => "-".to_owned(),
                };
                row.push(state);
            }
            let filters = view.pointer("/filters").and_then(|f| f.get(node)).and_then(Value::as_u64).unwrap_or(0);
            row.push(filters.to_string());
            row.push(error);
            rows.push(row);
        }
    }
    render(&header, rows.into_iter())
}

fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    lines.extend(rows);
    let mut widths = vec![0; header.len()];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let padded: Vec<String> = line.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(padded.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn route_table_shows_each_target_of_the_split() {
        let route = json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"traffic": [{"latestRevision": true, "percent": 100}]},
            "status": {
                "url": "http://hello.default.example.com",
                "traffic": [
                    {"revisionName": "hello-00001", "percent": 90},
                    {"revisionName": "hello-00002", "percent": 10, "tag": "canary"},
                    {"revisionName": "hello-00002", "tag": "next"}
                ],
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        let table = objects(GetKind::Route, &[route], false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    URL"), "{table}");
        assert!(lines[0].contains("   TRAFFIC   "), "{table}");
        assert!(
            lines[1].contains("   90% hello-00001, 10% hello-00002 #canary, 0% hello-00002 #next   True"),
            "{table}"
        );
        let unresolved = json!({
            "metadata": {"name": "new"},
            "spec": {"traffic": [{"configurationName": "new", "latestRevision": true, "percent": 100}]}
        });
        assert!(objects(GetKind::Route, &[unresolved], false).contains("100% new@latest"));
    }

    #[test]
    fn activity_figures_are_rounded() {
        let row = json!({
            "metadata": {"name": "hello-00001"},
            "concurrency": 0.0040034790490203545,
            "held": 0,
            "rps": 14.957126622131607,
            "responses_5xx": 2,
            "p99_ms": 12.0,
            "activations": 1,
            "reporters": 2
        });
        let table = objects(GetKind::Activity, &[row], false);
        let cells: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(cells, ["hello-00001", "0", "0", "14.96", "2", "12", "1", "2"], "{table}");
    }

    #[test]
    fn service_table_uses_knative_printer_columns() {
        let ksvc = json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "status": {
                "url": "http://hello.default.example.com",
                "latestCreatedRevisionName": "hello-00002",
                "latestReadyRevisionName": "hello-00001",
                "conditions": [
                    {"type": "ConfigurationsReady", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "RevisionMissing"}
                ]
            }
        });
        let table = objects(GetKind::Service, &[ksvc], false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["hello", "http://hello.default.example.com", "hello-00002", "hello-00001", "False", "RevisionMissing"]
        );
    }
}
