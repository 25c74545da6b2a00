//! The filter's three calls as the service answers them: each message
//! decoded and checked against the service's limits, a refusal that names
//! the input or the limit it broke, and the readiness long-poll with the
//! record of each filter VM's polls.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use revgate_model::plan::ObjectKey;
use revgate_proto::paths;
use revgate_proto::{ActivationRequest, MetricsReport};
use serde::Deserialize;

use super::bookkeeping::{FilterVm, MAX_POLLS_PER_VM, POLLER_IDLE_TIMEOUT, PollRefused};
use super::{Activation, ActivationService, MAX_FILTER_VMS, MAX_ID_BYTES, MAX_MESSAGE_BYTES, lock, now, unix_ms};
use crate::metrics::ReportError;
use crate::readiness::ReadinessTable;

/// Why the service refused a call; each answers its own status with a body
/// that names the input or the limit.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("revgate: the {what} is not a valid protobuf message: {source}")]
    BadMessage { what: &'static str, source: prost::DecodeError },
    #[error("revgate: the {what} could not be read: {detail}")]
    BadBody { what: &'static str, detail: String },
    #[error(
        "revgate: the {what} is larger than the activation service takes (MAX_MESSAGE_BYTES = {MAX_MESSAGE_BYTES})"
    )]
    TooLarge { what: &'static str },
    #[error("revgate: the readiness query is not valid: {detail}")]
    BadQuery { detail: String },
    #[error(
        "revgate: {field} is {len} bytes, longer than the activation service takes (MAX_ID_BYTES = {MAX_ID_BYTES})"
    )]
    IdTooLong { field: &'static str, len: usize },
    #[error(
        "revgate: revision {revision} is not in the gateway plan, so the activation was not recorded \
         (a filter activates the revisions its readiness view lists; check the revision's name, or wait for the next view)"
    )]
    UnknownRevision { revision: ObjectKey },
    #[error("revgate: {0}")]
    Report(ReportError),
    #[error(
        "revgate: the activation service already tracks {MAX_FILTER_VMS} filter VMs polling readiness \
         (MAX_FILTER_VMS = {MAX_FILTER_VMS}), so filter VM {reporter:?} of node {node:?} was refused; \
         a VM that stops polling is forgotten after {}s, then a new one is taken",
        POLLER_IDLE_TIMEOUT.as_secs()
    )]
    TooManyPollers { node: String, reporter: String },
    #[error(
        "revgate: filter VM {reporter:?} of node {node:?} already has {MAX_POLLS_PER_VM} readiness polls held \
         (MAX_POLLS_PER_VM = {MAX_POLLS_PER_VM}); each of its root contexts polls once at a time"
    )]
    TooManyPolls { node: String, reporter: String },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadMessage { .. } | Self::BadBody { .. } | Self::BadQuery { .. } | Self::IdTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Report(ReportError::RepeatedRevision { .. } | ReportError::BadEntry { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownRevision { .. } | Self::Report(ReportError::UnknownRevision { .. }) => StatusCode::NOT_FOUND,
            Self::TooManyPollers { .. }
            | Self::TooManyPolls { .. }
            | Self::Report(ReportError::TooManyReporters { .. }) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The kind of event, for the log's rate limit.
    fn kind(&self) -> &'static str {
        match self {
            Self::BadMessage { .. } | Self::BadBody { .. } | Self::BadQuery { .. } | Self::IdTooLong { .. } => {
                "bad request"
            }
            Self::Report(ReportError::RepeatedRevision { .. } | ReportError::BadEntry { .. }) => "bad request",
            Self::TooLarge { .. } => "message too large",
            Self::UnknownRevision { .. } => "activation of an unknown revision",
            Self::Report(ReportError::UnknownRevision { .. }) => "metrics of an unknown revision",
            Self::TooManyPollers { .. } => "too many filter VMs polling",
            Self::TooManyPolls { .. } => "too many polls of one filter VM",
            Self::Report(ReportError::TooManyReporters { .. }) => "too many filter VMs reporting",
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.len() > MAX_ID_BYTES { Err(Refusal::IdTooLong { field, len: value.len() }) } else { Ok(()) }
}

/// The message body, or the refusal that names what was wrong with it.
fn body(what: &'static str, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::TooLarge { what }
        } else {
            Refusal::BadBody { what, detail: rejection.body_text() }
        }
    })
}

impl ActivationService {
    /// The three calls, on the paths `revgate-proto` names.
    pub fn router(self) -> Router {
        Router::new()
            .route(paths::REPORT, post(report))
            .route(paths::ACTIVATE, post(activate))
            .route(paths::READINESS, get(readiness))
            .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .with_state(self)
    }

    /// Answers a refused call, logging it within the rate limit.
    fn refuse(&self, refusal: Refusal) -> Response {
        let status = refusal.status();
        self.log(refusal.kind(), true, || format!("refused ({status}): {refusal}"));
        (status, refusal.to_string()).into_response()
    }
}

async fn report(State(service): State<ActivationService>, bytes: Result<Bytes, BytesRejection>) -> Response {
    match record_report(&service, bytes) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(refusal) => service.refuse(refusal),
    }
}

fn record_report(service: &ActivationService, bytes: Result<Bytes, BytesRejection>) -> Result<(), Refusal> {
    let what = "metrics report";
    let report = MetricsReport::decode(body(what, bytes)?).map_err(|source| Refusal::BadMessage { what, source })?;
    check_id("node_id", &report.node_id)?;
    check_id("reporter", &report.reporter)?;
    // A report lists the few revisions with traffic: a lookup each in the
    // readiness table's index of the plan, never a walk over the plan.
    let table = service.readiness.borrow().clone();
    let known = |key: &ObjectKey| table.knows(key);
    lock(&service.demand).aggregator.record(report, &known, unix_ms()).map_err(Refusal::Report)
}

async fn activate(State(service): State<ActivationService>, bytes: Result<Bytes, BytesRejection>) -> Response {
    let activation = match activation(&service, bytes) {
        Ok(activation) => activation,
        Err(refusal) => return service.refuse(refusal),
    };
    service.log("activation requested", false, || {
        format!(
            "activation requested: revision {}, node {:?}, {} held",
            activation.revision, activation.node, activation.held
        )
    });
    {
        let ready = service.readiness.borrow().ready_anywhere(&activation.revision);
        let mut demand = lock(&service.demand);
        demand.aggregator.activated(&activation.revision, ready, activation.at_unix_ms);
        demand.activations.record(activation.clone());
    }
    // Nobody listening (no autoscaler) is fine: the activation is recorded.
    let _ = service.activations.send(activation);
    StatusCode::OK.into_response()
}

/// The activation a request asks for, if it names a revision of the plan.
fn activation(service: &ActivationService, bytes: Result<Bytes, BytesRejection>) -> Result<Activation, Refusal> {
    let what = "activation request";
    let request =
        ActivationRequest::decode(body(what, bytes)?).map_err(|source| Refusal::BadMessage { what, source })?;
    check_id("node_id", &request.node_id)?;
    let revision = ObjectKey::new(request.namespace, request.revision);
    if !service.knows(&revision) {
        return Err(Refusal::UnknownRevision { revision });
    }
    Ok(Activation { revision, node: request.node_id, held: request.held, at_unix_ms: unix_ms() })
}

#[derive(Debug, Deserialize)]
struct ReadinessQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    node: String,
    #[serde(default)]
    reporter: String,
    /// The filter's release gate ([`paths::READINESS_GATE_PARAM`]).
    #[serde(default)]
    gate: String,
    /// Whether the filter applies partial views ([`paths::READINESS_PARTIAL_PARAM`]).
    #[serde(default)]
    partial: String,
}

impl ReadinessQuery {
    /// The filter confirms endpoints in its own Envoy (`gate=probe`).
    fn probes(&self) -> bool {
        self.gate == paths::READINESS_GATE_PROBE
    }

    /// The answer to this poll from `table`: partial when the filter takes
    /// one and the table remembers its version.
    fn answer(&self, table: &ReadinessTable) -> Response {
        let partial = self.partial == paths::READINESS_PARTIAL_YES;
        protobuf(table.update_after(&self.node, self.probes(), self.after, partial).encode_to_vec())
    }
}

async fn readiness(
    State(service): State<ActivationService>,
    query: Result<Query<ReadinessQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return service.refuse(Refusal::BadQuery { detail: rejection.body_text() }),
    };
    // The poller already has `after`: record that, so a wait for every
    // filter to hear a version counts it from now on.
    let poll = match service.begin_poll(&query) {
        Ok(poll) => poll,
        Err(refusal) => return service.refuse(refusal),
    };
    let mut readiness = service.readiness.clone();
    let hold = tokio::time::sleep(Duration::from_millis(paths::READINESS_MAX_HOLD_MS));
    tokio::pin!(hold);
    loop {
        let table = readiness.borrow_and_update().clone();
        if table.version() != query.after {
            poll.answered(table.version());
            return query.answer(&table);
        }
        tokio::select! {
            changed = readiness.changed() => {
                if changed.is_err() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "revgate: the control plane is shutting down").into_response();
                }
            }
            () = &mut hold => {
                poll.answered(table.version());
                return query.answer(&table);
            }
        }
    }
}

/// One readiness poll being held for a filter VM. Dropping it (answered, or
/// the client left and the handler was dropped) ends the poll, so a VM
/// that stops polling is recognised as gone.
struct Poll {
    service: ActivationService,
    vm: FilterVm,
}

impl ActivationService {
    fn begin_poll(&self, query: &ReadinessQuery) -> Result<Poll, Refusal> {
        check_id("node", &query.node)?;
        check_id("reporter", &query.reporter)?;
        let vm = (query.node.clone(), query.reporter.clone());
        let mut begun = Ok(());
        self.pollers.send_if_modified(|pollers| {
            begun = pollers.begin(&vm, query.after, now());
            begun.is_ok()
        });
        begun.map_err(|refused| {
            let (node, reporter) = (query.node.clone(), query.reporter.clone());
            match refused {
                PollRefused::TooManyVms { .. } => Refusal::TooManyPollers { node, reporter },
                PollRefused::TooManyPolls => Refusal::TooManyPolls { node, reporter },
            }
        })?;
        Ok(Poll { service: self.clone(), vm })
    }
}

impl Poll {
    fn answered(&self, version: u64) {
        self.service.pollers.send_modify(|pollers| pollers.answered(&self.vm, version, now()));
    }
}

impl Drop for Poll {
    fn drop(&mut self) {
        // Nobody waits for a poll to end: a VM between polls is only gone
        // once its idle timeout passes, which waiters check by the clock.
        self.service.pollers.send_if_modified(|pollers| {
            pollers.end(&self.vm, now());
            false
        });
    }
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, paths::CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests;
