//! The admin API: an HTTP/JSON interface to the control plane, used by the
//! `revgate` CLI (`apply`, `delete`, `get`).
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/apply`, `/v1/delete` | `{"files":[{"name","content"}], "strict": false}` | 200 [`Applied`](crate::control::Applied), documents of other kinds skipped with a warning each; 422 `{"errors":[…]}` (with `strict`, for those documents too) |
//! | GET | `/v1/services`, `/v1/configurations`, `/v1/routes`, `/v1/revisions`, `/v1/domainmappings` | `?namespace=&name=` | objects with status |
//! | GET | `/v1/gateway` | | published versions and each gateway's ACK/NACK state |
//! | GET | `/v1/activity` | `?namespace=&name=` | per revision: what the gateway filters report |
//! | GET | `/v1/podautoscalers`, `/v1/serverlessservices` | `?namespace=&name=` | the KPA's decisions; whether the gateway holds each revision's requests |
//! | GET | `/v1/instances` | `?namespace=&name=` | the runtime's instances of each revision |
//! | PUT | `/v1/revisions/{ns}/{name}/endpoints` | `{"endpoints":["host:port",…]}` | only with `serve --runtime external` (409 otherwise); stored, and restored at start |
//! | GET | `/v1/rollouts` | `?namespace=&name=` | per Route: its rollout state, the `Rollout` condition and the one-line summary |
//! | POST | `/v1/rollouts/{ns}/{route}/{promote\|abort\|retry}` | | 200 the Route's rollout; 404 no such Route; 409 nothing to promote, abort or retry; 503 no rollout driver |
//! | GET | `/v1/unreadable` | | stored objects that could not be read at start (each answer also names them in `Warning` headers) |
//! | PUT | `/v1/debug/fault` | `{"fault": "duplicate-domain" \| null}` | only with test hooks |
//! | GET | `/healthz` | | `ok` |
//!
//! Bodies over 32 MiB get 413, request heads must arrive within 10 s and
//! bodies may not stall (see [`server`] for the limits); every limit answers
//! `{"errors":[…]}` naming it.
//!
//! Bound to loopback it needs no credentials; bound elsewhere, every `/v1`
//! call needs `Authorization: Bearer <token>` with the token from
//! `<state-dir>/admin-token`.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::manifests::ManifestFile;

/// Body of `/v1/apply` and `/v1/delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub files: Vec<ManifestFile>,
    /// Refuse documents of kinds revgate does not manage instead of
    /// skipping them with a warning (`--strict`).
    #[serde(default)]
    pub strict: bool,
}

/// Body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line per problem, each naming the file, the resource and the field.
    pub errors: Vec<String>,
}
