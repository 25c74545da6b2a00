//! The root context of one VM: parses the configuration, runs the timer,
//! keeps one readiness long-poll outstanding, posts metrics reports and
//! takes the answers of probes (`release_gate: probe`).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::host::{self, HostStore};
use super::http::{Http, send_probes};
use super::{Shared, VmState, retime, with_state};
use crate::control::{self, Call, Poller};
use crate::probe;
use crate::readiness::View;
use crate::{breaker, config};

/// The root context of one VM.
#[derive(Debug)]
pub struct Root {
    id: u32,
    shared: Shared,
    poller: Poller,
    start_ns: u64,
}

impl Root {
    pub fn new(id: u32) -> Self {
        let start_ns = host::now_ns().unwrap_or(0);
        Self { id, shared: Rc::new(RefCell::new(VmState::new(id, start_ns))), poller: Poller::new(), start_ns }
    }

    /// The answer to probe `token`: releases the requests it confirms.
    fn on_probe_answer(&mut self, token: u32, body_size: usize, now_ns: u64) {
        let (status, body) = host::probe_response(body_size);
        let outcome = probe::classify(status.as_deref(), &body);
        let Some((confirmed, effects)) = with_state(&self.shared, "taking a probe answer", |s| {
            s.gate.on_probe_answer(token, &outcome, now_ns, &HostStore)
        }) else {
            return;
        };
        match (&confirmed, &outcome) {
            (Some(c), _) => log::info!(
                "revgate: {} answered {} through `{}` after {} probe(s); releasing its held requests",
                c.key,
                c.status,
                c.cluster,
                c.attempts
            ),
            (None, probe::Outcome::NotYet { why }) => log::debug!("revgate: probe {token} not through yet: {why}"),
            (None, probe::Outcome::Reached { .. }) => {}
        }
        super::http::settle(&self.shared, effects, self.id, now_ns);
    }

    /// Learns the node id and settles the reporter id, once. Envoy without
    /// a node id (a bootstrap with no `node`) reports as `unknown-node`.
    fn ensure_identity(&self, now_ns: u64) {
        let known = with_state(&self.shared, "reading identity", |s| !s.reporter.is_empty()).unwrap_or(true);
        if known {
            return;
        }
        let node_id = host::node_id();
        let seq = host::vm_sequence(&HostStore, now_ns).unwrap_or(u64::from(self.id));
        let reporter = control::reporter_id(node_id.as_deref().unwrap_or("unknown-node"), self.start_ns, seq);
        log::info!("revgate: filter VM reporting as {reporter}");
        with_state(&self.shared, "setting identity", |s| {
            s.node_id = node_id.unwrap_or_default();
            s.reporter = reporter;
        });
    }

    fn poll_if_due(&mut self, now_ns: u64) {
        if !self.poller.is_due(now_ns) {
            return;
        }
        let Some((config, node_id, reporter)) =
            with_state(&self.shared, "polling", |s| (s.gate.config().clone(), s.node_id.clone(), s.reporter.clone()))
        else {
            return;
        };
        let call = Call::readiness(&config, self.poller.after(), &node_id, &reporter);
        match host::dispatch(&config, &call) {
            Ok(token) => self.poller.dispatched(token),
            Err(status) => {
                if self.poller.failures() == 0 {
                    log::warn!(
                        "revgate: cannot poll readiness: dispatch to cluster `{}` failed ({status:?}); \
                         does the cluster exist (knob control_cluster)?",
                        config.control_cluster
                    );
                }
                self.poller.dispatch_failed(now_ns);
            }
        }
    }

    fn report_if_due(&mut self, now_ns: u64) {
        let report = with_state(&self.shared, "reporting", |s| {
            if !s.gate.report_due(now_ns) {
                return None;
            }
            let (node_id, reporter) = (s.node_id.clone(), s.reporter.clone());
            let report = s.gate.take_report(now_ns, &node_id, &reporter)?;
            Some((s.gate.config().clone(), report))
        });
        let Some(Some((config, report))) = report else { return };
        let call = Call::report(&config, &report);
        if let Err(status) = host::dispatch(&config, &call) {
            log::debug!("revgate: metrics report not sent: dispatch failed ({status:?})");
        }
    }

    fn on_readiness_answer(&mut self, body_size: usize, now_ns: u64) {
        let (status, body) = host::call_response(body_size);
        let cluster =
            with_state(&self.shared, "reading config", |s| s.gate.config().control_cluster.clone()).unwrap_or_default();
        match control::readiness_answer(&cluster, status.as_deref(), &body) {
            Ok(decoded) => {
                for skipped in &decoded.skipped {
                    log::warn!("revgate: readiness update entry skipped: {skipped}");
                }
                if self.poller.failures() > 0 {
                    log::info!("revgate: readiness poll recovered");
                }
                let version = decoded.view.version();
                let view = decoded.view;
                let applied = with_state(&self.shared, "applying readiness", |s| match view {
                    View::Complete(table) => Ok(s.gate.on_view(table, now_ns, &HostStore)),
                    View::Partial(partial) => s.gate.on_partial(&partial, now_ns, &HostStore),
                });
                let effects = match applied {
                    Some(Ok(effects)) => effects,
                    Some(Err(wrong_base)) => {
                        // Ask again from the view this VM holds (or for a
                        // complete one without a view): that base matches.
                        log::info!("revgate: {wrong_base}");
                        self.poller.succeeded(now_ns, wrong_base.held.unwrap_or(0));
                        return;
                    }
                    None => Vec::new(),
                };
                super::http::settle(&self.shared, effects, self.id, now_ns);
                let activations =
                    with_state(&self.shared, "taking activations", |s| s.gate.take_activations()).unwrap_or_default();
                for activation in activations {
                    super::http::send_activation(&self.shared, activation, self.id);
                }
                // Revisions the view made ready wait for a probe here first.
                send_probes(&self.shared, self.id, now_ns);
                self.poller.succeeded(now_ns, version);
            }
            Err(e) => {
                if self.poller.failures() == 0 {
                    log::warn!("revgate: {e}; retrying with backoff");
                } else {
                    log::debug!("revgate: {e}");
                }
                self.poller.failed(now_ns);
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let now_ns = host::now_ns().unwrap_or(0);
        let is_probe = with_state(&self.shared, "matching a call", |s| s.gate.is_probe(token_id)).unwrap_or(false);
        if self.poller.take(token_id) {
            self.on_readiness_answer(body_size, now_ns);
            // Re-issue at once: a ready revision is released as soon as the
            // control plane says so, not at the next tick.
            self.poll_if_due(now_ns);
        } else if is_probe {
            self.on_probe_answer(token_id, body_size, now_ns);
        } else {
            let (status, _) = host::call_response(0);
            if status.as_deref() != Some("200") {
                log::debug!("revgate: control plane call {token_id} answered {status:?}");
            }
        }
        retime(&self.shared);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Before this VM counts anything (see `breaker`'s module doc).
        if let Err(e) = breaker::prepare(&HostStore) {
            log::warn!("revgate: {e}; the breaker's counters will create it");
        }
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, plugin_configuration_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let (config, errors) = config::parse(&raw);
        for error in &errors {
            log::warn!("revgate: {error}");
        }
        log::info!("revgate: release gate {}", config.release_gate.as_str());
        with_state(&self.shared, "configuring", |s| {
            s.gate.reconfigure(config);
            s.tick_ms = 0;
        });
        retime(&self.shared);
        // Never refuse the configuration: a filter that fails to configure
        // fails Envoy's listener, and defaults are always usable.
        true
    }

    fn on_tick(&mut self) {
        let Some(now_ns) = host::now_ns() else { return };
        self.ensure_identity(now_ns);
        let effects = with_state(&self.shared, "ticking", |s| s.gate.on_tick(now_ns, &HostStore)).unwrap_or_default();
        super::http::settle(&self.shared, effects, self.id, now_ns);
        send_probes(&self.shared, self.id, now_ns);
        self.poll_if_due(now_ns);
        self.report_if_due(now_ns);
        retime(&self.shared);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, Rc::clone(&self.shared))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
