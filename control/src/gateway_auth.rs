//! The gateway token: which token the gateways must present, where it comes
//! from, and the check in front of the activation service.
//!
//! The xDS server checks the same token with `revgate_xds::GatewayAuth`;
//! both ports require it only when bound beyond loopback (on loopback,
//! whoever can connect can read the state directory anyway), and the
//! gateways present it everywhere.
//!
//! | source (first that is set wins)      | `serve` / `up`      | `controller` | `render envoy --ads` |
//! |--------------------------------------|---------------------|--------------|----------------------|
//! | `--gateway-token-file PATH`          | yes                 | yes          | yes                  |
//! | `REVGATE_GATEWAY_TOKEN` (the token)  | yes                 | yes          | yes                  |
//! | `<state-dir>/gateway-token`          | created on 1st start| —            | read if present      |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use revgate_xds::server::auth::{self, Refusal, TokenError};
use revgate_xds::{GatewayAuth, GatewayToken};

use crate::private_file::{self, TokenFileError};

/// The token's file in the state directory, beside `admin-token`.
pub const GATEWAY_TOKEN_FILE: &str = "gateway-token";
/// The environment variable that carries the token itself.
pub const GATEWAY_TOKEN_ENV: &str = "REVGATE_GATEWAY_TOKEN";

/// The name of the activation port in refusals.
const ACTIVATION_PORT: &str = "the activation service";

/// Why the gateway token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum GatewayTokenError {
    #[error("reading the gateway token from {path}: {source} (check --gateway-token-file)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    StateFile(#[from] TokenFileError),
    #[error("the gateway token in {origin} is unusable: {source}")]
    Invalid { origin: String, source: TokenError },
    #[error(
        "{port} is bound to {addr}, beyond loopback, so gateways must authenticate, but no gateway token is set: \
         pass --gateway-token-file (in a cluster, the Secret revgate-gateway-token mounted as in \
         istio-manifests/400-controller.yaml) or set {GATEWAY_TOKEN_ENV}"
    )]
    Missing { port: &'static str, addr: SocketAddr },
}

/// The token given explicitly: `--gateway-token-file`, else the value of
/// [`GATEWAY_TOKEN_ENV`] (`env`).
pub fn explicit(file: Option<&Path>, env: Option<String>) -> Result<Option<GatewayToken>, GatewayTokenError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GatewayTokenError::Read { path: path.to_path_buf(), source })?;
        return parse(&text, path.display().to_string()).map(Some);
    }
    env.map(|value| parse(&value, GATEWAY_TOKEN_ENV.to_owned())).transpose()
}

/// The value of [`GATEWAY_TOKEN_ENV`], if set.
pub fn from_env() -> Option<String> {
    std::env::var(GATEWAY_TOKEN_ENV).ok()
}

/// The token given explicitly, else the one in `state_dir`, created (32
/// random bytes, hex, readable by the owner only) on first start.
pub fn for_server(
    file: Option<&Path>,
    env: Option<String>,
    state_dir: &Path,
) -> Result<GatewayToken, GatewayTokenError> {
    if let Some(token) = explicit(file, env)? {
        return Ok(token);
    }
    Ok(private_file::read_or_create_token(&state_dir.join(GATEWAY_TOKEN_FILE))?)
}

/// The token given explicitly, else the one in `state_dir` if there is one
/// (never created: rendering changes nothing).
pub fn for_render(
    file: Option<&Path>,
    env: Option<String>,
    state_dir: &Path,
) -> Result<Option<GatewayToken>, GatewayTokenError> {
    if let Some(token) = explicit(file, env)? {
        return Ok(Some(token));
    }
    let path = state_dir.join(GATEWAY_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(GatewayTokenError::Read { path, source }),
    }
}

fn parse(text: &str, origin: String) -> Result<GatewayToken, GatewayTokenError> {
    GatewayToken::new(text).map_err(|source| GatewayTokenError::Invalid { origin, source })
}

/// Whether a listener bound to `addr` must require the token: anything but
/// loopback (`0.0.0.0` included) is reachable from elsewhere.
pub fn required_on(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// The xDS server's check for a server bound to `addr`.
pub fn xds_auth(addr: SocketAddr, token: &GatewayToken) -> GatewayAuth {
    if required_on(addr) {
        tracing::info!(%addr, "xDS bound beyond loopback: gateways must present the gateway token");
        GatewayAuth::require(token.clone())
    } else {
        GatewayAuth::open()
    }
}

/// The activation service's router behind the token check when its
/// listener, bound to `addr`, is reachable beyond loopback.
pub fn activation_router(router: Router, addr: SocketAddr, token: Option<&GatewayToken>) -> Router {
    match token {
        Some(token) if required_on(addr) => {
            tracing::info!(%addr, "activation service bound beyond loopback: gateways must present the gateway token");
            router.layer(middleware::from_fn_with_state(token.clone(), require_token))
        }
        _ => router,
    }
}

/// Refuses a request without the token with 401 and a body that says what
/// is missing; the filter logs it.
async fn require_token(State(token): State<GatewayToken>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
    match auth::check(Some(&token), presented, ACTIVATION_PORT) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refuse(refusal),
    }
}

fn refuse(refusal: Refusal) -> Response {
    // Debug, not warn: anyone can knock, and must not fill the log.
    tracing::debug!(reason = %refusal, "activation request refused");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], format!("{refusal}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_token_is_created_once_private_and_explicit_ones_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = for_server(None, None, dir.path()).expect("created");
        let again = for_server(None, None, dir.path()).expect("read back");
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(GATEWAY_TOKEN_FILE)).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let from_env = for_server(None, Some("env-token-0123456789".into()), dir.path()).expect("env");
        assert_eq!(from_env.expose(), "env-token-0123456789");
        let file = dir.path().join("given");
        std::fs::write(&file, "file-token-0123456789\n").expect("write");
        let given = for_server(Some(&file), Some("env-token-0123456789".into()), dir.path()).expect("file");
        assert_eq!(given.expose(), "file-token-0123456789");

        let short = for_server(None, Some("x".into()), dir.path()).expect_err("too short");
        assert!(short.to_string().contains(GATEWAY_TOKEN_ENV), "{short}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(for_render(None, None, empty.path()).expect("nothing").is_none());
        assert!(!empty.path().join(GATEWAY_TOKEN_FILE).exists(), "rendering creates nothing");
    }

    #[test]
    fn only_listeners_beyond_loopback_require_the_token() {
        for (addr, required) in
            [("127.0.0.1:9091", false), ("[::1]:9091", false), ("0.0.0.0:9091", true), ("10.1.2.3:9091", true)]
        {
            assert_eq!(required_on(addr.parse().expect("address")), required, "{addr}");
        }
    }
}
