//! The garbage-collection driver of `revgate serve` and `up`: Knative's
//! revision GC (`config-gc`, see `revgate_model::gc`) run against the
//! applied world.
//!
//! The driver owns only its timer. Each pass is a command to the owner task
//! ([`Handle::collect`]), which marks every revision's routing state from
//! the plan being served and deletes what `config-gc` collects through the
//! same commit as `revgate delete`: the revisions leave the store, their
//! instances stop and their Envoy clusters go. The routing states live on
//! the stored Revisions (Knative's `serving.knative.dev/routingState` label
//! and `routingStateModified` annotation), so a restart resumes with them.
//!
//! A pass runs at start, whenever the world or the served plan changes
//! (a new revision, a Route leaving a revision, a rollout step, a changed
//! `config-gc`), and at the moment the next kept revision turns stale —
//! no polling in between.
//!
//! ```text
//! world, plan (watch) ──▶ driver (timer) ──Collect{now}──▶ ControlPlane ──▶ store, xDS
//! ```

use std::sync::Arc;
use std::time::Duration;

use revgate_model::World;
use revgate_model::plan::GatewayPlan;
use tokio::sync::watch;

use crate::control::{ControlError, Handle};
use crate::publish::unix_now;

/// How long a pass that failed (the store could not be written) waits
/// before the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The driver: its timer and what wakes it.
#[derive(Debug)]
pub struct Collector {
    handle: Handle,
    world: watch::Receiver<Arc<World>>,
    plan: watch::Receiver<Arc<GatewayPlan>>,
}

impl Collector {
    pub fn new(handle: Handle) -> Self {
        Self { world: handle.world_updates(), plan: handle.plan(), handle }
    }

    /// Runs passes until the control plane shuts down.
    pub async fn run(mut self) {
        loop {
            let wait = match self.handle.collect(unix_now()).await {
                Ok(collected) => {
                    if !collected.deleted.is_empty() {
                        tracing::info!(revisions = collected.deleted.len(), "revision garbage collection pass");
                    }
                    collected.next_check.map(|at| Duration::from_secs(at.saturating_sub(unix_now())))
                }
                Err(ControlError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RETRY_AFTER_FAILURE, "revision garbage collection failed");
                    Some(RETRY_AFTER_FAILURE)
                }
            };
            let timer = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.world.changed() => if changed.is_err() { return },
                changed = self.plan.changed() => if changed.is_err() { return },
                () = timer => {}
            }
            // Whatever else changed meanwhile is taken by the coming pass.
            self.world.mark_unchanged();
            self.plan.mark_unchanged();
        }
    }
}
