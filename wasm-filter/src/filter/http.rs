//! The HTTP context of one request: asks the gate what to do with it and
//! reports when its stream ends.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Status};

use revgate_proto::ActivationRequest;

use super::host::{self, HostStore};
use super::{Shared, retime, with_state};
use crate::control::Call;
use crate::gate::{Activation, Decision, Effect, Gate};
use crate::revision::{self, Target};

/// Upper bound on rounds of cleaning up vanished contexts in [`settle`];
/// each round only handles ids the previous one produced, so this is never
/// reached in practice.
const MAX_SETTLE_ROUNDS: usize = 8;

#[derive(Debug)]
pub struct Http {
    id: u32,
    shared: Shared,
    /// The gate tracks this request (it maps to a revision).
    tracked: bool,
}

impl Http {
    pub fn new(id: u32, shared: Shared) -> Self {
        Self { id, shared, tracked: false }
    }

    /// Tells the gate that the response of this request moved (see
    /// [`crate::deadline`]); requests it does not track cost nothing.
    fn response_activity(&self, record: fn(&mut Gate, u32, u64)) {
        if !self.tracked {
            return;
        }
        let Some(now_ns) = host::now_ns() else { return };
        let id = self.id;
        with_state(&self.shared, "timing a response", |s| record(&mut s.gate, id, now_ns));
    }

    fn target(&self) -> Option<Target> {
        let cluster = host::cluster_name()?;
        with_state(&self.shared, "resolving a cluster", |s| {
            s.target(&cluster, || revision::resolve(Some(&cluster), &host::cluster_metadata()))
        })
        .flatten()
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(target) = self.target() else { return Action::Continue };
        let Some(now_ns) = host::now_ns() else { return Action::Continue };
        let id = self.id;
        let Some(decision) =
            with_state(&self.shared, "deciding", |s| s.gate.on_request(id, target, now_ns, &HostStore))
        else {
            return Action::Continue;
        };
        self.tracked = true;
        match decision {
            Decision::Continue => Action::Continue,
            Decision::Pause { activate } => {
                if let Some(activation) = activate {
                    send_activation(&self.shared, activation, self.id);
                }
                // Held for a ready revision not yet confirmed here: probe soon.
                schedule_probes(&self.shared, self.id, now_ns);
                Action::Pause
            }
            Decision::Refuse(reply) => {
                match hostcalls::send_http_response(reply.status, reply.headers().to_vec(), Some(reply.body.as_bytes()))
                {
                    Ok(()) => Action::Pause,
                    Err(status) => {
                        log::warn!("revgate: could not send a local reply ({status:?}); passing the request");
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.response_activity(Gate::on_response_headers);
        Action::Continue
    }

    /// Every chunk of a response, the frames of an upgraded WebSocket too:
    /// Envoy passes a stream's data through the filter chain after the
    /// upgrade as before it.
    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.response_activity(Gate::on_response_data);
        Action::Continue
    }

    fn on_log(&mut self) {
        if !self.tracked {
            return;
        }
        let now_ns = host::now_ns().unwrap_or(0);
        let status = host::response_code();
        let id = self.id;
        let effects =
            with_state(&self.shared, "finishing a request", |s| s.gate.on_log(id, status, now_ns, &HostStore))
                .unwrap_or_default();
        // A freed breaker slot goes to the next request waiting in this VM now.
        settle(&self.shared, effects, self.id, now_ns);
    }
}

/// Carries out effects from context `current`, and forgets requests whose
/// context vanished (which may free capacity for others, hence the rounds).
pub(super) fn settle(shared: &Shared, mut effects: Vec<Effect>, current: u32, now_ns: u64) {
    for _ in 0..MAX_SETTLE_ROUNDS {
        if effects.is_empty() {
            return;
        }
        let gone = host::carry_out(effects, current);
        effects = with_state(shared, "forgetting vanished requests", |s| {
            gone.into_iter().flat_map(|id| s.gate.on_log(id, None, now_ns, &HostStore)).collect()
        })
        .unwrap_or_default();
    }
}

/// Has the root send the probes a request just made due, within the
/// probes' retry step (10 ms) instead of at the next ordinary tick.
///
/// A probe is never dispatched from a request's context: the proxy-wasm SDK
/// sends a call's answer to the context that was *running* when the call
/// was made (its `active_id`), whatever context was made effective, so the
/// answer of a probe dispatched here would reach this request's context and
/// be lost, leaving the probe in flight for good and the VM's requests for
/// the revision held until their activation timeout. The probes stay due
/// instead; a due probe makes [`retime`] shorten the root's timer, and the
/// root's tick dispatches them ([`send_probes`]).
fn schedule_probes(shared: &Shared, current: u32, now_ns: u64) {
    let Some((due, root_id)) = with_state(shared, "scheduling probes", |s| (s.gate.probes_due(now_ns), s.root_id))
    else {
        return;
    };
    if due && hostcalls::set_effective_context(root_id).is_ok() {
        retime(shared);
        if let Err(status) = hostcalls::set_effective_context(current) {
            log::warn!("revgate: could not restore context {current} after scheduling probes: {status:?}");
        }
    }
}

/// Dispatches the probes the gate wants now (`release_gate: probe`). Call
/// only from the root context's own callbacks (its tick, its call answers),
/// so that the answers reach the root (see [`schedule_probes`]); `current`
/// is made effective again afterwards.
pub fn send_probes(shared: &Shared, current: u32, now_ns: u64) {
    let Some((probes, root_id, path, timeout_ms)) = with_state(shared, "probing", |s| {
        let config = s.gate.config();
        let (path, timeout_ms) = (config.probe_path.clone(), config.probe_timeout_ms);
        (s.gate.take_probes(now_ns), s.root_id, path, timeout_ms)
    }) else {
        return;
    };
    if probes.is_empty() {
        return;
    }
    let as_root = root_id == current || hostcalls::set_effective_context(root_id).is_ok();
    for call in probes {
        let sent = if as_root { Some(host::dispatch_probe(&call.cluster, &call.key, &path, timeout_ms)) } else { None };
        with_state(shared, "recording a probe", |s| match sent {
            Some(Ok(token)) => {
                log::debug!("revgate: probing {} through `{}` (call {token})", call.key, call.cluster);
                s.gate.probe_dispatched(&call.cluster, token);
            }
            // Envoy fails a call it cannot route at once, inline: no host in
            // the cluster, or none healthy. Not yet; retried after a backoff.
            Some(Err(Status::InternalFailure)) => {
                s.gate.probe_dispatch_failed(&call.cluster, now_ns);
                log::debug!(
                    "revgate: probe of {} through `{}` failed at once (no healthy upstream?)",
                    call.key,
                    call.cluster
                );
            }
            Some(Err(status)) => {
                if s.gate.probe_dispatch_failed(&call.cluster, now_ns) == 1 {
                    log::warn!(
                        "revgate: cannot probe {} through cluster `{}` ({status:?}): this Envoy has no such cluster? \
                         Held requests wait until a probe gets through or their activation timeout",
                        call.key,
                        call.cluster
                    );
                }
            }
            None => {
                s.gate.probe_dispatch_failed(&call.cluster, now_ns);
                log::warn!("revgate: cannot switch to the root context to probe {}; retrying", call.key);
            }
        });
    }
    if as_root {
        // A probe that failed at once backs off: tick fast enough to retry it.
        retime(shared);
    }
    if as_root
        && root_id != current
        && let Err(status) = hostcalls::set_effective_context(current)
    {
        log::warn!("revgate: could not restore context {current} after probing: {status:?}");
    }
}

/// Sends an activation from the root context, so the call outlives the
/// request that caused it if that request is aborted; from `current` if that
/// fails. `current` is made effective again afterwards.
pub fn send_activation(shared: &Shared, activation: Activation, current: u32) {
    let Some((config, request, root_id)) = with_state(shared, "activating", |s| {
        let request = ActivationRequest {
            node_id: s.node_id.clone(),
            reporter: s.reporter.clone(),
            namespace: activation.key.namespace.clone(),
            revision: activation.key.revision.clone(),
            held: activation.held,
        };
        (s.gate.config().clone(), request, s.root_id)
    }) else {
        return;
    };
    let call = Call::activate(&request);
    let as_root = root_id == current || hostcalls::set_effective_context(root_id).is_ok();
    let sent = host::dispatch(&config, &call);
    if as_root
        && root_id != current
        && let Err(status) = hostcalls::set_effective_context(current)
    {
        log::warn!("revgate: could not restore context {current} after activating: {status:?}");
    }
    match sent {
        Ok(_) => log::debug!("revgate: activation sent for {}", activation.key),
        Err(status) => log::warn!(
            "revgate: activation for {} not sent: dispatch to `{}` failed ({status:?})",
            activation.key,
            config.control_cluster
        ),
    }
}
