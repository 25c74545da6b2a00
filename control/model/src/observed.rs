//! What the world cannot know by itself: the runtime's verdict on each
//! revision and the gateway's on each route. Status and the gateway plan
//! ([`crate::status`]) are computed from the world and these; both modes
//! (the process runtime and the cluster) only state what they observed.

use std::collections::BTreeMap;

use crate::plan::ObjectKey;

/// What the world cannot know by itself.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Readiness per revision; a revision absent here is ready (in this
    /// version a revision is ready once created).
    pub revisions: BTreeMap<ObjectKey, RevisionReadiness>,
    /// Whether the gateway accepted each route; absent means not yet programmed.
    pub ingress: BTreeMap<ObjectKey, IngressState>,
}

impl Observed {
    pub fn readiness(&self, revision: &ObjectKey) -> &RevisionReadiness {
        self.revisions.get(revision).unwrap_or(&RevisionReadiness::Ready)
    }

    pub fn is_ready(&self, revision: &ObjectKey) -> bool {
        matches!(self.readiness(revision), RevisionReadiness::Ready)
    }
}

/// A runtime's verdict on a revision: what was observed, from which the
/// model computes every status (see [`crate::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionReadiness {
    /// It can take traffic (or could, and is scaled to zero).
    Ready,
    /// Its workload is being deployed and has not become ready yet, and
    /// nothing says it failed: Knative's `Deploying`, shown as Unknown
    /// rather than False, because waiting is all there is to do.
    Deploying { message: String },
    /// It cannot run; `reason` is the runtime's word for why
    /// (`ImagePullBackOff`, `ProgressDeadlineExceeded`, …).
    NotReady { reason: String, message: String },
}

/// The gateway's verdict on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressState {
    /// Programmed and serving.
    Ready,
    /// Not (yet) programmed.
    NotConfigured,
    /// The gateway refused the configuration; `message` is its error text.
    Rejected { message: String },
}
