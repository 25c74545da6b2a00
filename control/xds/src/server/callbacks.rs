//! Hooks for observing the ADS protocol without changing it, as
//! go-control-plane's callbacks: the stream driver reports every response
//! sent and every ACK and NACK here, and whoever serves metrics counts them.
//! The default does nothing.

use std::fmt::Debug;
use std::time::Duration;

/// What the ADS streams report. Called from stream tasks: implementations
/// must be quick and must not block (count, don't log).
pub trait XdsCallbacks: Debug + Send + Sync + 'static {
    /// A response of `type_name` (`CDS`, `EDS`, `LDS`, `RDS`, `SRDS`) went to `node`.
    fn response_sent(&self, _node: &str, _type_name: &str) {}
    /// `node` accepted a response of `type_name`, `elapsed` after it was sent.
    fn acked(&self, _node: &str, _type_name: &str, _elapsed: Duration) {}
    /// `node` rejected a response of `type_name`.
    fn nacked(&self, _node: &str, _type_name: &str) {}
}

/// Observes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCallbacks;

impl XdsCallbacks for NoCallbacks {}
