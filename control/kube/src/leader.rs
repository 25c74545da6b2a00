//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it, so several controller replicas can run and
//! exactly one writes.
//!
//! Every replica steps every `retry_period`: it reads the Lease and
//! decides ([`plan`]):
//!
//! | the Lease | step | on `409 Conflict` / `AlreadyExists` |
//! |---|---|---|
//! | absent | create it, holder = me | another replica was first: follow |
//! | held by me | renew: `renewTime = now` | someone took it: follow |
//! | held by nobody (released) | take over: holder = me, `leaseTransitions + 1` | follow |
//! | held by another, unchanged for `lease_duration` | take over | follow |
//! | held by another, changed within `lease_duration` | follow | — |
//!
//! "Unchanged" is measured on this replica's clock from the moment it
//! last saw the Lease's `resourceVersion` change, never by comparing the
//! `renewTime` written by another machine: clocks of two nodes disagree,
//! the time since an observation does not. Writes carry the
//! `resourceVersion` that was read, so of two replicas racing for an
//! expired Lease the API server lets exactly one win.
//!
//! A leader that cannot renew for `renew_deadline` (the API server is
//! unreachable) steps down on its own, before the Lease can expire and
//! another replica take over, so two replicas never both believe they lead.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease and its timing. Defaults are client-go's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (the pod name, by convention).
    pub identity: String,
    /// How long followers wait after the last change before taking over.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often every replica steps.
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What failed while electing; the elector keeps trying.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "{action} Lease {namespace}/{name}: {source}; check that the controller's ServiceAccount may get, create \
         and update leases in {namespace}"
    )]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// This replica's part, after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// `holder`: the replica that leads, if known.
    Follower {
        holder: Option<String>,
    },
}

/// What a step does about the Lease ([`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Create,
    Renew,
    TakeOver,
    Follow { holder: String },
}

/// Decides a step from the Lease as read (`None`: absent) and how long its
/// content has been unchanged, by this replica's clock.
pub fn plan(identity: &str, lease: Option<&LeaseSpec>, unchanged_for: Duration, lease_duration: Duration) -> Plan {
    let Some(spec) = lease else { return Plan::Create };
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(holder) if holder == identity => Plan::Renew,
        None => Plan::TakeOver,
        Some(holder) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(lease_duration, Duration::from_secs);
            if unchanged_for >= duration { Plan::TakeOver } else { Plan::Follow { holder: holder.to_string() } }
        }
    }
}

/// One replica's elector: the Lease API and what it last saw.
#[derive(Debug)]
pub struct LeaseElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease's `resourceVersion` when last read, and when it last changed.
    observed: Option<(String, Instant)>,
    /// When this replica last created or renewed the Lease.
    renewed_at: Option<Instant>,
}

impl LeaseElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, observed: None, renewed_at: None }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One step: read the Lease, then create, renew, take over or follow.
    /// `now` measures how long the Lease has been unchanged; `wall` is
    /// written into the Lease.
    pub async fn step(&mut self, now: Instant, wall: DateTime<Utc>) -> Result<Role, LeaderError> {
        let current = self.api.get_opt(&self.settings.name).await.map_err(|e| self.error("reading", e))?;
        let unchanged_for = match &current {
            None => Duration::ZERO,
            Some(lease) => {
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                match &self.observed {
                    Some((seen, since)) if *seen == version => now.saturating_duration_since(*since),
                    _ => {
                        self.observed = Some((version, now));
                        Duration::ZERO
                    }
                }
            }
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = plan(&self.settings.identity, spec, unchanged_for, self.settings.lease_duration);
        let holder = spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
        let written = match decision {
            Plan::Follow { holder } => return Ok(Role::Follower { holder: Some(holder) }),
            Plan::Create => {
                let lease = self.lease(None, self.record(None, wall, false));
                self.api.create(&PostParams::default(), &lease).await.map_err(|e| ("creating", e))
            }
            Plan::Renew | Plan::TakeOver => {
                let take_over = decision == Plan::TakeOver;
                let lease = self.lease(current.as_ref(), self.record(spec, wall, take_over));
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await.map_err(|e| ("updating", e))
            }
        };
        match written {
            Ok(lease) => {
                let version = lease.metadata.resource_version.unwrap_or_default();
                self.observed = Some((version, now));
                self.renewed_at = Some(now);
                Ok(Role::Leader)
            }
            // Another replica wrote the Lease between our read and our write.
            Err((_, kube::Error::Api(e))) if e.code == 409 => Ok(Role::Follower { holder }),
            Err((action, e)) => Err(self.error(action, e)),
        }
    }

    /// A step that never fails: an error keeps a leader leading until its
    /// renew deadline has passed, and a follower following.
    pub async fn tick(&mut self, now: Instant, wall: DateTime<Utc>, leading: bool) -> bool {
        match self.step(now, wall).await {
            Ok(role) => role == Role::Leader,
            Err(e) => {
                let within_deadline =
                    self.renewed_at.is_some_and(|at| now.saturating_duration_since(at) < self.settings.renew_deadline);
                tracing::warn!(error = %e, leading = leading && within_deadline, "leader election step failed");
                leading && within_deadline
            }
        }
    }

    /// Gives the Lease up (holder cleared), so another replica takes over
    /// at its next step instead of waiting out the lease duration.
    pub async fn release(&mut self, wall: DateTime<Utc>) -> Result<(), LeaderError> {
        let Some(current) = self.api.get_opt(&self.settings.name).await.map_err(|e| self.error("reading", e))? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let released = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(wall)),
            ..spec
        };
        let lease = self.lease(Some(&current), released);
        self.renewed_at = None;
        match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.error("releasing", e)),
        }
    }

    /// The record this replica writes: a renewal keeps the acquire time and
    /// transitions; a take-over (or a creation) starts a new term.
    fn record(&self, current: Option<&LeaseSpec>, wall: DateTime<Utc>, take_over: bool) -> LeaseSpec {
        let seconds = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
        let renewing = current.is_some() && !take_over;
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if renewing { current.and_then(|s| s.acquire_time.clone()) } else { Some(MicroTime(wall)) },
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(if take_over { transitions + 1 } else { transitions }),
            ..LeaseSpec::default()
        }
    }

    fn lease(&self, current: Option<&Lease>, spec: LeaseSpec) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }

    fn error(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            action,
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }
}

/// Runs the election until `shutdown`, publishing whether this replica
/// leads; on shutdown a leader releases the Lease.
pub async fn run(mut elector: LeaseElector, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(elector.settings.retry_period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {
                let was = *leading.borrow();
                let now = elector.tick(Instant::now(), Utc::now(), was).await;
                if now != was {
                    tracing::info!(identity = %elector.settings.identity, leading = now, "leadership changed");
                }
                leading.send_if_modified(|l| std::mem::replace(l, now) != now);
            }
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = elector.release(Utc::now()).await {
            tracing::warn!(error = %e, "could not release the Lease; another replica takes over when it expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn plan_follows_the_table() {
        let d = Duration::from_secs(15);
        let secs = Duration::from_secs;
        assert_eq!(plan("a", None, secs(0), d), Plan::Create);
        assert_eq!(plan("a", Some(&held_by("a")), secs(100), d), Plan::Renew);
        assert_eq!(plan("a", Some(&held_by("b")), secs(14), d), Plan::Follow { holder: "b".into() });
        assert_eq!(plan("a", Some(&held_by("b")), secs(15), d), Plan::TakeOver);
        assert_eq!(plan("a", Some(&held_by("")), secs(0), d), Plan::TakeOver, "a released lease is free");
        let short = LeaseSpec { lease_duration_seconds: Some(1), ..held_by("b") };
        assert_eq!(plan("a", Some(&short), secs(1), d), Plan::TakeOver, "the lease's own duration counts");
    }
}
