//! The CLI side of the admin API: `revgate apply`, `delete` and `get`
//! (and the client `revgate rollout` uses).

use std::process::ExitCode;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::Value;

use super::{ApplyRequest, ErrorBody};
use crate::cli::{ClientArgs, GetArgs, GetKind, ManifestArgs, OutputFormat};
use crate::control::Applied;
use crate::manifests;
use crate::table;

/// Exit code for manifests the control plane rejected (distinct from
/// "could not reach the control plane").
const EXIT_REJECTED: u8 = 2;

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        }
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let response = request.send().await.with_context(|| {
            format!("cannot reach the revgate control plane at {} (is `revgate serve` running? set --server or REVGATE_SERVER)", self.base)
        })?;
        let status = response.status();
        // Like kubectl, show the server's warnings (for example stored
        // objects it could not read) whatever the command.
        for warning in response.headers().get_all(reqwest::header::WARNING) {
            if let Ok(text) = warning.to_str() {
                eprintln!("Warning: {}", warning_text(text));
            }
        }
        let body = response.bytes().await.context("reading the control plane's answer")?;
        Ok((status, body.to_vec()))
    }
}

/// The text of a `Warning` header value (`299 - "text"`).
fn warning_text(value: &str) -> &str {
    value.split_once(" - ").map_or(value, |(_, text)| text).trim_matches('"')
}

/// Prints a rejection and returns the rejection exit code.
pub(crate) fn rejected(status: StatusCode, body: &[u8]) -> anyhow::Result<ExitCode> {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(errors) => {
            for error in errors.errors {
                eprintln!("error: {error}");
            }
        }
        Err(_) => eprintln!("error: the control plane answered {status}: {}", String::from_utf8_lossy(body)),
    }
    Ok(ExitCode::from(EXIT_REJECTED))
}

/// `revgate apply -f` / `revgate delete -f`.
pub async fn apply(args: ManifestArgs, delete: bool) -> anyhow::Result<ExitCode> {
    let files = manifests::read_all(&args.files)?;
    let client = Client::new(&args.client);
    let path = if delete { "/v1/delete" } else { "/v1/apply" };
    let sent: Vec<String> = files.iter().map(|file| format!("{} ({} bytes)", file.name, file.content.len())).collect();
    let request = ApplyRequest { files, strict: args.strict };
    let (status, body) = client.send(client.request(reqwest::Method::POST, path).json(&request)).await?;
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        let code = rejected(status, &body);
        eprintln!("error: the request carried {}", sent.join(", "));
        return code;
    }
    if !status.is_success() {
        return rejected(status, &body);
    }
    let applied: Applied = serde_json::from_slice(&body).context("decoding the control plane's answer")?;
    // As kubectl prints an API server's warnings: on stderr, before the result.
    for warning in applied.warnings {
        eprintln!("Warning: {warning}");
    }
    for change in applied.changes {
        println!("{change}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `revgate get KIND [NAME]`.
pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client);
    let path = match args.kind {
        GetKind::Service => "/v1/services",
        GetKind::Configuration => "/v1/configurations",
        GetKind::Route => "/v1/routes",
        GetKind::Revision => "/v1/revisions",
        GetKind::Domainmapping => "/v1/domainmappings",
        GetKind::Gateway => "/v1/gateway",
        GetKind::Activity => "/v1/activity",
        GetKind::Kpa => "/v1/podautoscalers",
        GetKind::Sks => "/v1/serverlessservices",
    };
    let mut query: Vec<(&str, &str)> = Vec::new();
    if !args.all_namespaces && args.kind != GetKind::Gateway {
        query.push(("namespace", &args.namespace));
    }
    if let Some(name) = &args.name {
        query.push(("name", name));
    }
    let (status, body) = client.send(client.request(reqwest::Method::GET, path).query(&query)).await?;
    if !status.is_success() {
        return rejected(status, &body);
    }
    let value: Value = serde_json::from_slice(&body).context("decoding the control plane's answer")?;
    if let (Some(name), Some(list)) = (&args.name, value.as_array())
        && list.is_empty()
    {
        eprintln!("error: {} \"{name}\" not found in namespace {}", kind_name(args.kind), args.namespace);
        return Ok(ExitCode::FAILURE);
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&value)?),
        OutputFormat::Table => match args.kind {
            GetKind::Gateway => print!("{}", table::gateway(&value)),
            kind => {
                let objects = value.as_array().cloned().unwrap_or_default();
                if objects.is_empty() {
                    eprintln!(
                        "No resources found in {} namespace.",
                        if args.all_namespaces { "any" } else { &args.namespace }
                    );
                } else {
                    print!("{}", table::objects(kind, &objects, args.all_namespaces));
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: GetKind) -> &'static str {
    match kind {
        GetKind::Service => "services.serving.knative.dev",
        GetKind::Configuration => "configurations.serving.knative.dev",
        GetKind::Route => "routes.serving.knative.dev",
        GetKind::Revision => "revisions.serving.knative.dev",
        GetKind::Domainmapping => "domainmappings.serving.knative.dev",
        GetKind::Gateway => "gateway",
        GetKind::Activity => "activity",
        GetKind::Kpa => "podautoscalers.autoscaling.internal.knative.dev",
        GetKind::Sks => "serverlessservices.networking.internal.knative.dev",
    }
}
