//! Faults injected into the resources sent to gateways, for testing how
//! revgate handles a gateway that rejects (NACKs) a configuration.
//!
//! Only reachable through the admin API when `revgate serve` runs with test
//! hooks enabled.

use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use serde::{Deserialize, Serialize};

/// A way to make a gateway reject the next configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// A virtual host that lists the same domain twice, which Envoy rejects
    /// ("Only unique values for domains are permitted").
    DuplicateDomain,
}

impl Fault {
    /// The virtual host appended to every route configuration while the
    /// fault is armed.
    pub fn virtual_host(self) -> VirtualHost {
        match self {
            Fault::DuplicateDomain => VirtualHost {
                name: "revgate-fault".to_owned(),
                domains: vec!["fault.invalid".to_owned(), "fault.invalid".to_owned()],
                ..Default::default()
            },
        }
    }
}
