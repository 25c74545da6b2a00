//! Knative's revision garbage collection (the v2 collector) as pure logic,
//! time as a parameter: `config-gc`, the routing state Knative's labeler
//! keeps on every Revision, and which revisions of a Configuration to
//! delete now and when to look again.
//!
//! # Routing state
//!
//! Knative's route reconciler marks each Revision with the label
//! `serving.knative.dev/routingState` and stamps the annotation
//! `serving.knative.dev/routingStateModified` (RFC 3339) whenever the label
//! changes; the annotation `serving.knative.dev/routes` lists the Routes
//! that send it traffic. That stamp is the revision's last-active time, so
//! it lives on the Revision itself and survives restarts with it.
//!
//! | routes naming the revision | state before | state after | stamp |
//! |---|---|---|---|
//! | some | any but `active` | `active` | now |
//! | none | `active` | `reserve` | now |
//! | none | unset | `pending` | creation time |
//! | none | `pending`, `reserve` | unchanged | unchanged |
//!
//! # Collection
//!
//! A revision is *active* — never collected — when it is its
//! Configuration's latest created or latest ready revision, carries
//! `serving.knative.dev/no-gc: "true"`, is routed now, or is in any routing
//! state but `reserve` (a revision never routed stays `pending`). Of the
//! others, oldest last-active first: a *stale* one (created longer than
//! `retain-since-create-time` ago and last active longer than
//! `retain-since-last-active-time` ago, each check skipped when
//! `disabled`) is deleted while more than `min-non-active-revisions`
//! remain; then, of those not stale, all but the `max-non-active-revisions`
//! most recently active are deleted. With all three limits `disabled`
//! nothing is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::autoscaling::parse_go_duration;
use crate::error::ConfigError;
use crate::meta::{CONFIGURATION_LABEL, ObjectMeta, rfc3339};
use crate::plan::{GatewayPlan, ObjectKey};
use crate::world::{Change, ChangeKind, REVISION_RESOURCE, World};

/// The ConfigMap in `knative-serving` that configures collection.
pub const GC_CONFIG_MAP: &str = "config-gc";
/// Label on a Revision: whether a Route sends it traffic (see [`RoutingState`]).
pub const ROUTING_STATE_LABEL: &str = "serving.knative.dev/routingState";
/// Annotation on a Revision: when its routing state last changed (RFC 3339).
pub const ROUTING_STATE_MODIFIED_ANNOTATION: &str = "serving.knative.dev/routingStateModified";
/// Annotation on a Revision: the Routes that send it traffic, comma-separated.
pub const ROUTES_ANNOTATION: &str = "serving.knative.dev/routes";
/// Annotation on a Revision: `"true"` keeps it from ever being collected.
pub const NO_GC_ANNOTATION: &str = "serving.knative.dev/no-gc";

/// The value of `config-gc` keys that turns a limit off.
const DISABLED: &str = "disabled";

/// Knative's `serving.knative.dev/routingState` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingState {
    /// No label yet.
    Unset,
    /// Created and never routed.
    Pending,
    /// A Route sends it traffic.
    Active,
    /// Was routed, no longer is: the only state that can be collected.
    Reserve,
}

impl RoutingState {
    /// The state a revision's labels say (an unknown value counts as unset,
    /// as Knative reads it).
    pub fn of(labels: &BTreeMap<String, String>) -> Self {
        match labels.get(ROUTING_STATE_LABEL).map(String::as_str) {
            Some("pending") => Self::Pending,
            Some("active") => Self::Active,
            Some("reserve") => Self::Reserve,
            _ => Self::Unset,
        }
    }

    /// The label's value; empty for [`RoutingState::Unset`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "",
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Reserve => "reserve",
        }
    }
}

/// `config-gc`, with Knative's defaults. `None` is `disabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// `retain-since-create-time`: revisions younger than this are kept.
    pub retain_since_create_time: Option<Duration>,
    /// `retain-since-last-active-time`: revisions routed this recently are kept.
    pub retain_since_last_active_time: Option<Duration>,
    /// `min-non-active-revisions`: this many non-active revisions are always kept.
    pub min_non_active_revisions: u64,
    /// `max-non-active-revisions`: beyond this many, the oldest go even if not stale.
    pub max_non_active_revisions: Option<u64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

impl GcConfig {
    /// Parses `config-gc` data with Knative's rules: durations in Go's
    /// syntax or `disabled`, counts as whole numbers (`max-…` also
    /// `disabled`), `min-non-active-revisions` at most `max-…`. Every
    /// invalid key is reported, named.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, Vec<ConfigError>> {
        let defaults = Self::default();
        let mut errors = Vec::new();
        let mut duration = |key: &str, default: Option<Duration>| -> Option<Duration> {
            let Some(raw) = data.get(key) else { return default };
            let text = raw.trim();
            if text.eq_ignore_ascii_case(DISABLED) {
                return None;
            }
            match parse_go_duration(text) {
                Some(nanos) if nanos >= 0 => Some(Duration::from_nanos(nanos.unsigned_abs())),
                Some(_) => {
                    errors.push(ConfigError::new(key, format!("must be non-negative or \"disabled\", got {raw:?}")));
                    default
                }
                None => {
                    errors.push(ConfigError::new(
                        key,
                        format!("expected a duration such as \"48h\" or \"disabled\", got {raw:?}"),
                    ));
                    default
                }
            }
        };
        let retain_since_create_time = duration("retain-since-create-time", defaults.retain_since_create_time);
        let retain_since_last_active_time =
            duration("retain-since-last-active-time", defaults.retain_since_last_active_time);
        let mut count = |key: &str, default: Option<u64>, may_disable: bool| -> Option<u64> {
            let Some(raw) = data.get(key) else { return default };
            let text = raw.trim();
            if may_disable && text.eq_ignore_ascii_case(DISABLED) {
                return None;
            }
            match text.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    let expected = if may_disable { "a whole number or \"disabled\"" } else { "a whole number" };
                    errors.push(ConfigError::new(key, format!("expected {expected}, got {raw:?}")));
                    default
                }
            }
        };
        let min_non_active_revisions =
            count("min-non-active-revisions", Some(defaults.min_non_active_revisions), false).unwrap_or_default();
        let max_non_active_revisions = count("max-non-active-revisions", defaults.max_non_active_revisions, true);
        if errors.is_empty()
            && let Some(max) = max_non_active_revisions
            && min_non_active_revisions > max
        {
            errors.push(ConfigError::new(
                "min-non-active-revisions",
                format!(
                    "min-non-active-revisions ({min_non_active_revisions}) must be <= max-non-active-revisions ({max})"
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            retain_since_create_time,
            retain_since_last_active_time,
            min_non_active_revisions,
            max_non_active_revisions,
        })
    }

    /// Whether every limit is `disabled`: nothing is ever collected.
    pub fn is_disabled(&self) -> bool {
        self.retain_since_create_time.is_none()
            && self.retain_since_last_active_time.is_none()
            && self.max_non_active_revisions.is_none()
    }
}

/// What collection needs to know of one revision of a Configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    pub state: RoutingState,
    /// When the routing state last changed, Unix seconds.
    pub state_modified: Option<u64>,
    /// `serving.knative.dev/no-gc: "true"`.
    pub preserved: bool,
    /// A Route sends it traffic right now, whatever its label says yet.
    pub routed: bool,
}

impl Candidate {
    /// Reads a revision's metadata; `routed` from the traffic being served.
    pub fn of(meta: &ObjectMeta, routed: bool) -> Self {
        Self {
            name: meta.name.clone(),
            created: meta.creation_timestamp.as_deref().and_then(parse_rfc3339).unwrap_or(0),
            state: RoutingState::of(&meta.labels),
            state_modified: meta.annotations.get(ROUTING_STATE_MODIFIED_ANNOTATION).and_then(|t| parse_rfc3339(t)),
            preserved: meta.annotations.get(NO_GC_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")),
            routed,
        }
    }

    /// The routing state's stamp, else the creation time: the order of "most recently active".
    fn last_active(&self) -> u64 {
        self.state_modified.unwrap_or(self.created)
    }

    fn is_active(&self, latest: &[&str]) -> bool {
        latest.contains(&self.name.as_str()) || self.preserved || self.routed || self.state != RoutingState::Reserve
    }

    /// Not stale before this time (Unix seconds); `None` with both time limits disabled.
    fn stale_from(&self, config: &GcConfig) -> Option<u64> {
        let after = |since: u64, keep: Option<Duration>| keep.map(|d| since.saturating_add(ceil_secs(d)));
        match (
            after(self.created, config.retain_since_create_time),
            after(self.last_active(), config.retain_since_last_active_time),
        ) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }
}

/// One collection pass over a Configuration's revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collection {
    /// Revisions to delete now, oldest last-active first.
    pub delete: Vec<String>,
    /// When a kept revision turns stale (Unix seconds): the next pass that
    /// may collect more without anything else changing.
    pub next_check: Option<u64>,
}

/// Which of a Configuration's revisions to delete at `now` (Unix seconds),
/// and when to look again. `latest` holds the Configuration's latest
/// created and latest ready revision names.
pub fn collect(config: &GcConfig, latest: &[&str], revisions: &[Candidate], now: u64) -> Collection {
    let min = usize::try_from(config.min_non_active_revisions).unwrap_or(usize::MAX);
    if config.is_disabled() || revisions.len() <= min {
        return Collection::default();
    }
    let mut non_active: Vec<&Candidate> = revisions.iter().filter(|r| !r.is_active(latest)).collect();
    if non_active.len() <= min {
        return Collection::default();
    }
    // Oldest last-active first; names break ties so a pass is deterministic.
    non_active.sort_by(|a, b| a.last_active().cmp(&b.last_active()).then_with(|| a.name.cmp(&b.name)));

    let mut delete = Vec::new();
    let mut kept: Vec<&Candidate> = Vec::new();
    let mut next_check: Option<u64> = None;
    let deletable = non_active.len() - min;
    for revision in &non_active {
        if delete.len() >= deletable {
            // Only `min` remain: they all stay, and (as in Knative) the
            // maximum is not applied either, which `min <= max` makes moot.
            return Collection { delete, next_check: None };
        }
        match revision.stale_from(config) {
            Some(from) if from <= now => delete.push(revision.name.clone()),
            Some(from) => {
                next_check = Some(next_check.map_or(from, |n| n.min(from)));
                kept.push(revision);
            }
            None => kept.push(revision),
        }
    }
    // Of the revisions that are not stale, all but the most recently active `max` go.
    if let Some(max) = config.max_non_active_revisions.and_then(|m| usize::try_from(m).ok())
        && kept.len() > max
    {
        let excess = kept.len() - max;
        delete.extend(kept.iter().take(excess).map(|r| r.name.clone()));
    }
    Collection { delete, next_check }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What the labeler writes on one revision, given the Routes that send it
/// traffic now; `None` when its metadata already says so.
pub fn routing_meta(meta: &ObjectMeta, routes: &BTreeSet<String>, now: u64) -> Option<RoutingMeta> {
    let state = RoutingState::of(&meta.labels);
    let listed = meta.annotations.get(ROUTES_ANNOTATION).map(String::as_str).unwrap_or_default();
    let routes_value = routes.iter().map(String::as_str).collect::<Vec<_>>().join(",");
    let stamp = |at: u64| Some(rfc3339(at));
    let (new_state, modified) = match (routes.is_empty(), state) {
        (false, RoutingState::Active) | (true, RoutingState::Pending | RoutingState::Reserve) => (state, None),
        (false, _) => (RoutingState::Active, stamp(now)),
        (true, RoutingState::Active) => (RoutingState::Reserve, stamp(now)),
        (true, RoutingState::Unset) => {
            let created = meta.creation_timestamp.as_deref().and_then(parse_rfc3339).unwrap_or(now);
            (RoutingState::Pending, stamp(created))
        }
    };
    if new_state == state && listed == routes_value {
        return None;
    }
    Some(RoutingMeta {
        state: new_state,
        modified: modified.or_else(|| meta.annotations.get(ROUTING_STATE_MODIFIED_ANNOTATION).cloned()),
        routes: routes_value,
    })
}

/// A revision's routing label and annotations, as Knative's labeler writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingMeta {
    pub state: RoutingState,
    /// `serving.knative.dev/routingStateModified`.
    pub modified: Option<String>,
    /// `serving.knative.dev/routes`; empty: the annotation goes.
    pub routes: String,
}

impl RoutingMeta {
    /// Writes these into a revision's metadata.
    pub fn write(&self, meta: &mut ObjectMeta) {
        meta.labels.insert(ROUTING_STATE_LABEL.to_string(), self.state.as_str().to_string());
        if let Some(modified) = &self.modified {
            meta.annotations.insert(ROUTING_STATE_MODIFIED_ANNOTATION.to_string(), modified.clone());
        }
        if self.routes.is_empty() {
            meta.annotations.remove(ROUTES_ANNOTATION);
        } else {
            meta.annotations.insert(ROUTES_ANNOTATION.to_string(), self.routes.clone());
        }
    }
}

/// The Routes that send each revision traffic: those whose split or tags
/// in `plan` name it (whichever split a rollout serves), and those whose
/// traffic, as written or as last assigned (`status.traffic`), names it by
/// revision — a Route that cannot be served right now still keeps its
/// revisions, as Knative's labeler reads them from the Route's status.
pub fn routes_by_revision(world: &World, plan: &GatewayPlan) -> BTreeMap<ObjectKey, BTreeSet<String>> {
    let mut routes: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
    for route in &plan.routes {
        let served = route.splits.iter().map(|s| &s.revision).chain(route.tags.iter().map(|t| &t.revision));
        for revision in served {
            routes.entry(revision.clone()).or_default().insert(route.key.name.clone());
        }
    }
    for (key, route) in &world.routes {
        let assigned = route.status.iter().flat_map(|s| s.traffic.iter());
        for name in route.spec.traffic.iter().chain(assigned).filter_map(|t| t.revision_name.as_ref()) {
            let revision = ObjectKey::new(key.namespace.clone(), name.clone());
            if world.revisions.contains_key(&revision) {
                routes.entry(revision).or_default().insert(key.name.clone());
            }
        }
    }
    routes
}

/// Whether two revisions' metadata differ only in what the labeler writes.
pub fn same_but_routing(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    let strip = |meta: &ObjectMeta| {
        let mut annotations = meta.annotations.clone();
        annotations.remove(ROUTING_STATE_MODIFIED_ANNOTATION);
        annotations.remove(ROUTES_ANNOTATION);
        annotations
    };
    strip(a) == strip(b)
}

impl World {
    /// This world with every revision's routing state as the Routes of
    /// `plan` make it at `now`; `None` when nothing changes.
    pub fn with_routing_states(&self, plan: &GatewayPlan, now: u64) -> Option<World> {
        let routes = routes_by_revision(self, plan);
        let none = BTreeSet::new();
        let mut next: Option<World> = None;
        for (key, revision) in &self.revisions {
            let Some(meta) = routing_meta(&revision.metadata, routes.get(key).unwrap_or(&none), now) else { continue };
            let world = next.get_or_insert_with(|| self.clone());
            if let Some(stored) = world.revisions.get_mut(key) {
                meta.write(&mut Arc::make_mut(stored).metadata);
            }
        }
        next
    }

    /// The revisions to collect at `now` under this world's `config-gc`,
    /// and when to look again. Revisions `plan` serves are never collected.
    pub fn collectable_revisions(&self, plan: &GatewayPlan, now: u64) -> (Vec<ObjectKey>, Option<u64>) {
        let config = self.settings().gc;
        if config.is_disabled() {
            return (Vec::new(), None);
        }
        let routes = routes_by_revision(self, plan);
        let mut by_configuration: BTreeMap<ObjectKey, Vec<Candidate>> = BTreeMap::new();
        for (key, revision) in &self.revisions {
            let Some(configuration) = revision.metadata.labels.get(CONFIGURATION_LABEL) else { continue };
            let config_key = ObjectKey::new(key.namespace.clone(), configuration.clone());
            by_configuration
                .entry(config_key)
                .or_default()
                .push(Candidate::of(&revision.metadata, routes.contains_key(key)));
        }
        let (delete, due) = self.collect_configurations(&config, by_configuration, now);
        (delete, due.values().min().copied())
    }

    /// Runs the collector over each given Configuration's revisions: the
    /// revisions to delete, and per Configuration when a kept one turns stale.
    pub(crate) fn collect_configurations(
        &self,
        config: &GcConfig,
        configurations: impl IntoIterator<Item = (ObjectKey, Vec<Candidate>)>,
        now: u64,
    ) -> (Vec<ObjectKey>, BTreeMap<ObjectKey, u64>) {
        let mut delete = Vec::new();
        let mut due = BTreeMap::new();
        for (config_key, candidates) in configurations {
            let status = self.configurations.get(&config_key).and_then(|c| c.status.as_ref());
            let latest: Vec<&str> = status
                .into_iter()
                .flat_map(|s| [&s.latest_created_revision_name, &s.latest_ready_revision_name])
                .flatten()
                .map(String::as_str)
                .collect();
            let collection = collect(config, &latest, &candidates, now);
            delete.extend(collection.delete.into_iter().map(|name| ObjectKey::new(config_key.namespace.clone(), name)));
            if let Some(at) = collection.next_check {
                due.insert(config_key, at);
            }
        }
        (delete, due)
    }

    /// This world without the given revisions, as deleting them reports it.
    /// Revisions not in the world are skipped.
    pub fn without_revisions(&self, keys: &[ObjectKey]) -> (World, Vec<Change>) {
        let mut world = self.clone();
        let mut changes = Vec::new();
        for key in keys {
            if world.revisions.remove(key).is_some() {
                changes.push(Change {
                    resource: REVISION_RESOURCE.to_string(),
                    key: key.clone(),
                    change: ChangeKind::Deleted,
                });
            }
        }
        world.record_assigned_traffic();
        (world, changes)
    }
}

/// Reads an RFC 3339 UTC time (`2024-05-01T10:00:00Z`, fractions and
/// offsets allowed) as Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (clock, offset_secs) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset.get(1..)?.split_once(':')?;
        (clock, sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60))
    };
    let clock = clock.split('.').next()?;
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of the
/// calendar arithmetic behind [`rfc3339`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // 0 = March
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[path = "gc_pass.rs"]
mod pass;
pub use pass::{Collector, Pass};

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
