//! Bearer tokens, and gateway authentication: the token a gateway presents
//! to the control plane's ports.
//!
//! Istio and Envoy Gateway authenticate every xDS client; revgate does too
//! whenever a port is reachable beyond loopback. Envoy presents the token as
//! gRPC metadata `authorization: Bearer <token>` (the ADS `grpc_service`'s
//! `initial_metadata` in the bootstraps revgate renders), and the gateway
//! filter presents the same header on its calls to the activation service.
//! On loopback, whoever can connect can already read the state directory,
//! so the token is sent but not required.
//!
//! The admin API's token is a [`BearerToken`] too, checked the same way
//! ([`BearerToken::is_presented_by`]): one type, one comparison, for every
//! port that requires a token.

use std::fmt;
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The header (gRPC metadata key) that carries the token.
pub const AUTHORIZATION: &str = "authorization";
/// The scheme in front of the token.
pub const BEARER: &str = "Bearer ";

/// A shared secret a client presents as `authorization: Bearer <token>`.
/// Never empty, never short; its `Debug` never shows it, so that it cannot
/// end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

/// The token the gateways present to the xDS and activation ports.
pub type GatewayToken = BearerToken;

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty; it needs at least {MIN_TOKEN_LEN} characters")]
    Empty,
    #[error("the token has {len} characters; it needs at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)")]
    TooShort { len: usize },
    #[error(
        "the token may hold only visible ASCII characters without spaces (it travels in an HTTP header); \
         e.g. `openssl rand -hex 32`"
    )]
    Characters,
}

/// Shortest token accepted: guessing one must not be practical.
pub const MIN_TOKEN_LEN: usize = 16;

impl BearerToken {
    /// A token from its text, surrounding whitespace (a file's newline) removed.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Characters);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: token.len() });
        }
        Ok(Self(token.into()))
    }

    /// The token itself, for the places that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `authorization` header value that presents it.
    pub fn bearer(&self) -> String {
        format!("{BEARER}{}", self.0)
    }

    /// Whether an `authorization` header value presents this token. Compares
    /// in time independent of where the values differ, so that timing does
    /// not reveal the token a byte at a time.
    pub fn is_presented_by(&self, authorization: &str) -> bool {
        let Some(presented) = strip_bearer(authorization) else { return false };
        constant_time_eq(presented.as_bytes(), self.0.as_bytes())
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Whether `presented` equals `expected`, in time that depends only on the
/// length of `expected`: every byte is compared, whatever differs first.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = presented.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        difference |= usize::from(presented.get(i).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

/// The token of a `Bearer` header value (the scheme is case-insensitive).
fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(BEARER.len())?;
    scheme.eq_ignore_ascii_case(BEARER).then_some(token.trim())
}

/// What a request that presents no valid token is told, as the reason of
/// gRPC `UNAUTHENTICATED` or the body of HTTP 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{port} is bound beyond loopback and requires the gateway token: the request carries no \
         `authorization: Bearer <token>`; give the gateway the token from <state-dir>/gateway-token \
         (or --gateway-token-file / REVGATE_GATEWAY_TOKEN)"
    )]
    Missing { port: &'static str },
    #[error(
        "{port} is bound beyond loopback and requires the gateway token: the `authorization` bearer token \
         presented does not match; give the gateway the token from <state-dir>/gateway-token \
         (or --gateway-token-file / REVGATE_GATEWAY_TOKEN)"
    )]
    Wrong { port: &'static str },
}

/// Checks an `authorization` header value against `required`: `Ok` when no
/// token is required or the right one is presented.
pub fn check(required: Option<&BearerToken>, authorization: Option<&str>, port: &'static str) -> Result<(), Refusal> {
    let Some(token) = required else { return Ok(()) };
    match authorization {
        None => Err(Refusal::Missing { port }),
        Some(value) if token.is_presented_by(value) => Ok(()),
        Some(_) => Err(Refusal::Wrong { port }),
    }
}

/// The tonic interceptor in front of the ADS service: refuses a stream with
/// `UNAUTHENTICATED` unless it presents the token, when one is required.
#[derive(Debug, Clone, Default)]
pub struct GatewayAuth {
    required: Option<BearerToken>,
}

impl GatewayAuth {
    /// Every client is served (a server bound to loopback).
    pub fn open() -> Self {
        Self { required: None }
    }

    /// Only clients presenting `token` are served.
    pub fn require(token: BearerToken) -> Self {
        Self { required: Some(token) }
    }
}

/// The name of the xDS port in refusals.
const XDS_PORT: &str = "the xDS server";

impl Interceptor for GatewayAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
        match check(self.required.as_ref(), presented, XDS_PORT) {
            Ok(()) => Ok(request),
            Err(refusal) => {
                // Debug, not warn: anyone can knock, and must not fill the log.
                // The client is told why (Envoy logs the status).
                tracing::debug!(remote = ?request.remote_addr(), reason = %refusal, "xDS client refused");
                Err(Status::unauthenticated(refusal.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = BearerToken::new(&format!("{TOKEN}\n")).expect("a valid token");
        assert_eq!(token.expose(), TOKEN);
        assert!(!format!("{token:?}").contains(TOKEN));
        assert_eq!(BearerToken::new(""), Err(TokenError::Empty));
        assert_eq!(BearerToken::new(" \n"), Err(TokenError::Empty));
        assert_eq!(BearerToken::new("short"), Err(TokenError::TooShort { len: 5 }));
        assert_eq!(BearerToken::new("0123456789 abcdef0123"), Err(TokenError::Characters));
    }

    #[test]
    fn a_token_is_presented_only_by_exactly_itself() {
        let token = BearerToken::new(TOKEN).expect("a valid token");
        for (presented, expected) in [
            (format!("Bearer {TOKEN}"), true),
            (format!("BEARER {TOKEN} "), true),
            ("Bearer ".to_owned(), false),
            ("Bearer".to_owned(), false),
            (String::new(), false),
            (format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]), false),
            (format!("Bearer {TOKEN}0"), false),
            (format!("Bearer {TOKEN}\0"), false),
            (format!("Basic {TOKEN}"), false),
        ] {
            assert_eq!(token.is_presented_by(&presented), expected, "{presented:?}");
        }
    }

    #[test]
    fn the_comparison_looks_at_every_byte_of_the_expected_token() {
        let expected = TOKEN.as_bytes();
        assert!(constant_time_eq(expected, expected));
        assert!(!constant_time_eq(b"", expected));
        assert!(!constant_time_eq(&expected[..4], expected), "a prefix");
        let mut last = expected.to_vec();
        if let Some(byte) = last.last_mut() {
            *byte ^= 1;
        }
        assert!(!constant_time_eq(&last, expected), "only the last byte differs");
        let mut longer = expected.to_vec();
        longer.push(0);
        assert!(!constant_time_eq(&longer, expected), "a zero byte beyond the end");
    }

    #[test]
    fn only_the_right_bearer_token_passes_when_one_is_required() {
        let token = BearerToken::new(TOKEN).expect("a valid token");
        type Case<'a> = (Option<&'a BearerToken>, Option<&'a str>, Result<(), Refusal>);
        let cases: [Case<'_>; 7] = [
            (None, None, Ok(())),
            (None, Some("Bearer wrong"), Ok(())),
            (Some(&token), Some(&token.bearer()), Ok(())),
            (Some(&token), Some("bearer 0123456789abcdef0123"), Ok(())),
            (Some(&token), None, Err(Refusal::Missing { port: "p" })),
            (Some(&token), Some("Bearer 0123456789abcdef012"), Err(Refusal::Wrong { port: "p" })),
            (Some(&token), Some(TOKEN), Err(Refusal::Wrong { port: "p" })),
        ];
        for (required, presented, expected) in cases {
            assert_eq!(check(required, presented, "p"), expected, "{presented:?}");
        }
        let message = Refusal::Missing { port: "the xDS server" }.to_string();
        assert!(message.contains("authorization: Bearer"), "{message}");
    }
}
