//! Knative's three response timers, for the requests this VM sent on to a
//! revision. Pure: time comes in as `now_ns`, expiries go out as values.
//!
//! Knative's queue-proxy starts them when a request reaches the revision
//! (knative/serving `pkg/http/handler/timeout.go`); the filter starts them
//! when it lets a request go upstream (at once, or on release from a hold):
//!
//! | timer | fires when | answer |
//! |---|---|---|
//! | `timeoutSeconds` | no response has started by then | 504 `request-timeout` |
//! | `responseStartTimeoutSeconds` | likewise; of the two, the shorter applies | 504 `response-start-timeout` |
//! | `idleTimeoutSeconds` (0: none) | no response byte for that long (counted from the start, then from the last byte) | 504 `idle-timeout` before the response started; after, the stream ends |
//!
//! What resets what: response headers (a WebSocket's `101` too) stop the
//! first two timers for good, so an upgraded WebSocket or a long gRPC
//! stream is never cut by them; every response byte restarts the idle
//! timer. Request bytes reset nothing, as in Knative.
//!
//! Revgate's own Envoy enforces the response-start deadline of a route
//! natively (a per-try timeout); the filter's timers are what applies each
//! revision's own deadline in a split, the idle timeout, and every timer in
//! a gateway revgate does not program (Istio).

use std::collections::HashMap;

use crate::readiness::Readiness;
use crate::reply::LocalReply;
use crate::revision::RevisionKey;

const NS_PER_MS: u64 = 1_000_000;

/// Which limit bounds the wait for a response to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLimit {
    /// `timeoutSeconds`.
    Request,
    /// `responseStartTimeoutSeconds`, shorter than `timeoutSeconds`.
    ResponseStart,
}

/// A revision's response limits, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// The response-start deadline and which limit it is, if any.
    pub start: Option<(u64, StartLimit)>,
    /// 0: none.
    pub idle_ms: u64,
}

impl Limits {
    /// The limits a readiness line gives: the shorter of `timeoutSeconds`
    /// (`activation_timeout_ms`) and `responseStartTimeoutSeconds`, and
    /// `idleTimeoutSeconds`. Zero fields mean "not given".
    pub fn of(line: &Readiness) -> Self {
        let (request, response_start) = (line.activation_timeout_ms, line.response_start_timeout_ms);
        let start = match (request, response_start) {
            (0, 0) => None,
            (0, start) => Some((start, StartLimit::ResponseStart)),
            (request, start) if start > 0 && start < request => Some((start, StartLimit::ResponseStart)),
            (request, _) => Some((request, StartLimit::Request)),
        };
        Self { start, idle_ms: line.idle_timeout_ms }
    }

    fn is_none(&self) -> bool {
        self.start.is_none() && self.idle_ms == 0
    }
}

#[derive(Debug, Clone)]
struct Timer {
    key: RevisionKey,
    limits: Limits,
    sent_ns: u64,
    started: bool,
    /// The last response byte (or headers), else when the request was sent.
    active_ns: u64,
}

/// The timers of the requests in flight to revisions, by HTTP context id.
#[derive(Debug, Default)]
pub struct Timers {
    timers: HashMap<u32, Timer>,
}

impl Timers {
    /// Request `id` for `key` was sent upstream at `now_ns`.
    pub fn start(&mut self, id: u32, key: &RevisionKey, limits: Limits, now_ns: u64) {
        if limits.is_none() {
            return;
        }
        let timer = Timer { key: key.clone(), limits, sent_ns: now_ns, started: false, active_ns: now_ns };
        self.timers.insert(id, timer);
    }

    /// The response's headers arrived: the start deadline no longer applies.
    pub fn response_started(&mut self, id: u32, now_ns: u64) {
        if let Some(timer) = self.timers.get_mut(&id) {
            timer.started = true;
            timer.active_ns = now_ns;
            if timer.limits.idle_ms == 0 {
                self.timers.remove(&id);
            }
        }
    }

    /// Response bytes arrived: the idle timer starts over.
    pub fn response_data(&mut self, id: u32, now_ns: u64) {
        if let Some(timer) = self.timers.get_mut(&id) {
            timer.active_ns = now_ns;
        }
    }

    /// The stream ended.
    pub fn remove(&mut self, id: u32) {
        self.timers.remove(&id);
    }

    /// Requests in flight with a timer.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// The requests whose limit passed by `now_ns`, each with its answer
    /// (Envoy ends a stream whose response started instead), forgotten
    /// here; sorted by id so the effects come out in a stable order.
    pub fn expired(&mut self, now_ns: u64) -> Vec<(u32, LocalReply)> {
        let mut expired: Vec<(u32, LocalReply)> = Vec::new();
        for (id, timer) in &self.timers {
            let start = timer
                .limits
                .start
                .filter(|_| !timer.started)
                .filter(|(ms, _)| now_ns.saturating_sub(timer.sent_ns) >= ms.saturating_mul(NS_PER_MS));
            let idle_ms = timer.limits.idle_ms;
            let idle = idle_ms > 0 && now_ns.saturating_sub(timer.active_ns) >= idle_ms.saturating_mul(NS_PER_MS);
            let reply = match start {
                Some((ms, StartLimit::Request)) => LocalReply::request_timeout(&timer.key, ms),
                Some((ms, StartLimit::ResponseStart)) => LocalReply::response_start_timeout(&timer.key, ms),
                None if idle => LocalReply::idle_timeout(&timer.key, idle_ms),
                None => continue,
            };
            expired.push((*id, reply));
        }
        expired.sort_by_key(|(id, _)| *id);
        for (id, _) in &expired {
            self.timers.remove(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{IDLE_TIMEOUT, REQUEST_TIMEOUT, RESPONSE_START_TIMEOUT};

    const MS: u64 = NS_PER_MS;
    const T0: u64 = 1_000 * MS;

    fn key() -> RevisionKey {
        RevisionKey::new("default", "hello-00001")
    }

    fn line(request_ms: u64, start_ms: u64, idle_ms: u64) -> Readiness {
        Readiness {
            ready_endpoints: 1,
            container_concurrency: 0,
            activation_timeout_ms: request_ms,
            response_start_timeout_ms: start_ms,
            idle_timeout_ms: idle_ms,
        }
    }

    fn reasons(expired: &[(u32, LocalReply)]) -> Vec<(u32, u32, &'static str)> {
        expired.iter().map(|(id, reply)| (*id, reply.status, reply.reason)).collect()
    }

    #[test]
    fn the_shorter_of_the_two_start_limits_applies_and_is_named() {
        let cases = [
            (line(2_000, 2_000, 0), Some((2_000, StartLimit::Request)), "equal: timeoutSeconds"),
            (line(2_000, 1_000, 0), Some((1_000, StartLimit::ResponseStart)), "response start is shorter"),
            (line(2_000, 0, 0), Some((2_000, StartLimit::Request)), "no response-start limit"),
            (line(0, 1_000, 0), Some((1_000, StartLimit::ResponseStart)), "no request limit"),
            (line(0, 0, 0), None, "none"),
        ];
        for (line, want, case) in cases {
            assert_eq!(Limits::of(&line).start, want, "{case}");
        }
        assert_eq!(Limits::of(&line(0, 0, 5_000)).idle_ms, 5_000);
    }

    #[test]
    fn a_response_that_does_not_start_in_time_is_answered_504_naming_the_limit() {
        let mut timers = Timers::default();
        timers.start(1, &key(), Limits::of(&line(2_000, 2_000, 0)), T0);
        timers.start(2, &key(), Limits::of(&line(2_000, 1_000, 0)), T0);
        assert!(timers.expired(T0 + 999 * MS).is_empty());
        let expired = timers.expired(T0 + 1_000 * MS);
        assert_eq!(reasons(&expired), [(2, 504, RESPONSE_START_TIMEOUT)]);
        assert!(expired[0].1.body.contains("default/hello-00001") && expired[0].1.body.contains("within 1 s"));
        assert_eq!(reasons(&timers.expired(T0 + 2_000 * MS)), [(1, 504, REQUEST_TIMEOUT)]);
        assert!(timers.is_empty(), "answered once");
    }

    #[test]
    fn a_started_response_is_never_cut_by_the_start_limits() {
        let mut timers = Timers::default();
        timers.start(1, &key(), Limits::of(&line(2_000, 1_000, 0)), T0);
        timers.response_started(1, T0 + 500 * MS);
        assert!(timers.is_empty(), "nothing left to time without an idle limit");
        assert!(timers.expired(T0 + 3_600_000 * MS).is_empty());
    }

    #[test]
    fn the_idle_timer_restarts_on_every_response_byte_before_and_after_the_start() {
        let mut timers = Timers::default();
        timers.start(1, &key(), Limits::of(&line(10_000, 10_000, 1_000)), T0);
        // Before the response starts, idleness counts from the send.
        assert_eq!(reasons(&timers.expired(T0 + 1_000 * MS)), [(1, 504, IDLE_TIMEOUT)]);

        timers.start(2, &key(), Limits::of(&line(10_000, 10_000, 1_000)), T0);
        timers.response_started(2, T0 + 900 * MS);
        timers.response_data(2, T0 + 1_800 * MS);
        assert!(timers.expired(T0 + 2_700 * MS).is_empty(), "a byte 900 ms ago");
        // Past the start deadline too: only idleness can end a started response.
        timers.response_data(2, T0 + 12_000 * MS);
        assert!(timers.expired(T0 + 12_500 * MS).is_empty());
        let expired = timers.expired(T0 + 13_000 * MS);
        assert_eq!(reasons(&expired), [(2, 504, IDLE_TIMEOUT)]);
        assert!(expired[0].1.body.contains("no response byte for 1 s"), "{}", expired[0].1.body);
    }

    #[test]
    fn requests_without_limits_or_that_ended_are_not_timed() {
        let mut timers = Timers::default();
        timers.start(1, &key(), Limits::default(), T0);
        assert!(timers.is_empty());
        timers.start(2, &key(), Limits::of(&line(1_000, 0, 0)), T0);
        timers.remove(2);
        assert!(timers.expired(T0 + 5_000 * MS).is_empty());
    }
}
