//! The proxy-wasm glue: a root context per VM (configuration, timer, calls
//! to the control plane) and an HTTP context per request, both thin over
//! [`Gate`]. Host calls live in [`host`].
//!
//! The root and the HTTP contexts of one VM share its state through an
//! `Rc<RefCell<_>>` (a VM is single-threaded). The state is only ever
//! borrowed to compute a decision and released before carrying it out, so a
//! host call that re-enters the VM never finds it borrowed; a borrow that
//! fails anyway is logged and the request passes, instead of panicking.

pub mod host;
mod http;
mod root;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::config::FilterConfig;
use crate::gate::Gate;
use crate::probe::PROBE_BACKOFF_INITIAL_MS;
use crate::revision::Target;

pub use root::Root;

/// Cluster names resolved to their revision (or to none), so a request
/// costs one property read instead of four. Bounded: cleared when full.
const TARGET_CACHE_LIMIT: usize = 1024;

/// The state one VM's contexts share.
#[derive(Debug)]
struct VmState {
    gate: Gate,
    root_id: u32,
    node_id: String,
    reporter: String,
    targets: HashMap<String, Option<Target>>,
    /// The root timer's current period (0: not set yet).
    tick_ms: u64,
}

impl VmState {
    fn new(root_id: u32, now_ns: u64) -> Self {
        Self {
            gate: Gate::new(FilterConfig::default(), now_ns),
            root_id,
            node_id: String::new(),
            reporter: String::new(),
            targets: HashMap::new(),
            tick_ms: 0,
        }
    }

    /// The revision behind `cluster`, resolving (and caching) it on first use.
    fn target(&mut self, cluster: &str, resolve: impl FnOnce() -> Option<Target>) -> Option<Target> {
        if let Some(known) = self.targets.get(cluster) {
            return known.clone();
        }
        let target = resolve();
        if self.targets.len() >= TARGET_CACHE_LIMIT {
            self.targets.clear();
        }
        self.targets.insert(cluster.to_owned(), target.clone());
        target
    }
}

type Shared = Rc<RefCell<VmState>>;

/// Sets the root timer's period: `tick_interval_ms`, or the probes' retry
/// step while a probe backs off (only then, so an idle gateway does not wake
/// up every few milliseconds). Call with the root context effective.
fn retime(shared: &Shared) {
    let Some((period_ms, current_ms)) = with_state(shared, "timing", |s| {
        let normal = s.gate.config().tick_interval_ms;
        let period = if s.gate.probe_retry_pending() { normal.min(PROBE_BACKOFF_INITIAL_MS) } else { normal };
        (period, s.tick_ms)
    }) else {
        return;
    };
    if period_ms == current_ms {
        return;
    }
    match proxy_wasm::hostcalls::set_tick_period(Duration::from_millis(period_ms)) {
        Ok(()) => {
            with_state(shared, "timing", |s| s.tick_ms = period_ms);
        }
        Err(status) => log::error!("revgate: cannot set the timer ({status:?}); held requests may not expire"),
    }
}

/// Runs `f` on the VM state, or logs and returns `None` if it is borrowed.
fn with_state<R>(shared: &Shared, what: &str, f: impl FnOnce(&mut VmState) -> R) -> Option<R> {
    match shared.try_borrow_mut() {
        Ok(mut state) => Some(f(&mut state)),
        Err(_) => {
            log::error!("revgate: VM state busy while {what}; skipping");
            None
        }
    }
}
