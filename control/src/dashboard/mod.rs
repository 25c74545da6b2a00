//! The live dashboard, served on the admin address: one page at `/` that
//! polls a JSON feed at `/dashboard/feed`.
//!
//! The page is embedded in the binary (`page.html`: HTML, inline CSS and
//! plain JavaScript), so it needs no build step and loads nothing from the
//! network. It asks for the feed every [`SAMPLE_INTERVAL`], passing the
//! cursor of the last answer as `?since=`, so each answer after the first
//! carries only the newest history point; a page left open keeps at most
//! the window of points it draws.
//!
//! # Layout
//! - `history`: the ring of per-revision samples behind the sparklines
//!   (pure, time as a parameter).
//! - `feed`: the feed, built from the views the admin API serves (pure).
//! - here: the sampler task that owns the ring, the routes, and who may
//!   read them.
//!
//! # Who may read it
//! The admin API's rules: bound to loopback, anyone on this machine; bound
//! elsewhere, only whoever presents the admin token. A browser cannot send
//! an `Authorization` header when it opens a URL, so `/?token=<token>`
//! checks the token once, sets it in an `HttpOnly`, `SameSite=Strict`
//! cookie and redirects to `/` (out of the address bar). The cookie opens
//! the dashboard's two routes only, never the `/v1` API, which stays
//! bearer-only; `Authorization: Bearer <token>` works on both routes too.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the page; 401 with how to pass the token |
//! | `GET /?token=T` | 303 to `/` setting the cookie; 401 for a wrong token |
//! | `GET /dashboard/feed[?since=N]` | [`feed::Feed`] as JSON; 400 for a `since` that is not a number; 401 as the API |

pub mod feed;
pub mod history;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use revgate_xds::BearerToken;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::activation::ActivationService;
use crate::autoscaling::KpaStatuses;
use crate::control::{Handle, RuntimeStates};
use history::History;

/// How often the sampler records a point, and how often the page asks for
/// the feed: the filters report every second, and a sparkline needs no more.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// How far back the sparklines reach (and the ring keeps): 150 points.
pub const HISTORY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The cookie `/?token=` sets.
const COOKIE: &str = "revgate_dashboard";

/// The page, embedded: no build chain, no network.
const PAGE: &str = include_str!("page.html");

/// What the dashboard reads: the admin API's sources.
#[derive(Debug, Clone)]
pub struct Sources {
    pub control: Handle,
    pub activation: ActivationService,
    pub kpa: Option<KpaStatuses>,
    pub instances: Option<RuntimeStates>,
}

#[derive(Debug, Clone)]
struct Dashboard {
    sources: Sources,
    history: watch::Receiver<History>,
    token: Option<BearerToken>,
}

/// The dashboard's routes, with the sampler started behind them. The
/// sampler owns the history ring and ends once the routes are dropped (when
/// the admin API stops), since nobody could read the ring any more.
/// `token`, as the admin API's: required when it is bound beyond loopback.
pub fn router(sources: Sources, token: Option<BearerToken>) -> Router {
    let (tx, history) = watch::channel(History::new(HISTORY_WINDOW, SAMPLE_INTERVAL));
    tokio::spawn(sample(sources.activation.clone(), tx));
    let dashboard = Dashboard { sources, history, token };
    Router::new()
        .route("/", get(page))
        .route("/dashboard/feed", get(feed))
        .route_layer(middleware::from_fn_with_state(dashboard.clone(), require_token))
        .with_state(dashboard)
}

/// Records a point every [`SAMPLE_INTERVAL`] until every reader is gone.
async fn sample(activation: ActivationService, tx: watch::Sender<History>) {
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = tx.closed() => return,
        }
        let activity = activation.activity();
        tx.send_modify(|history| history.record(unix_ms(), &activity));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// The page; with `?token=`, the cookie that lets a browser in (the token
/// itself was checked by [`require_token`]).
async fn page(State(dashboard): State<Dashboard>, Query(query): Query<PageQuery>) -> Response {
    if query.token.is_none() {
        let mut response = Html(PAGE).into_response();
        // Nothing from elsewhere: only the page's own script and style, only
        // requests back to this address, and no framing by other sites.
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        );
        return response;
    }
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Some(token) = &dashboard.token {
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", hex(token.expose()));
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Debug, Deserialize)]
struct FeedQuery {
    since: Option<String>,
}

async fn feed(State(dashboard): State<Dashboard>, Query(query): Query<FeedQuery>) -> Response {
    let since = match query.since.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(cursor)) => Some(cursor),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "since={:?}: the cursor must be a whole number, the `history.cursor` of an earlier answer",
                    query.since.unwrap_or_default()
                ),
            );
        }
    };
    let slice = dashboard.history.borrow().since(since);
    let sources = &dashboard.sources;
    let world = sources.control.world();
    let observed = sources.control.observed();
    let kpa = sources.kpa.as_ref().map(|kpa| kpa.borrow().clone()).unwrap_or_default();
    let instances = sources.instances.as_ref().map(|states| states.borrow().clone()).unwrap_or_default();
    // As `revgate get ksvc`/`route` show them: with the split a rollout serves.
    let rollouts = sources.control.rollout_states();
    let routes = crate::rollout::route_views(&world, &observed, &rollouts);
    let inputs = feed::Inputs {
        services: &crate::rollout::service_views(&world, &observed, &routes),
        routes: &routes,
        revisions: &world.revision_views(&observed),
        kpa: &kpa,
        instances: &instances,
        registrations: &sources.control.registrations(),
        activity: &sources.activation.activity(),
        gateway: &sources.control.gateway(),
        filters: &sources.activation.filters_in_sync(),
        published: &sources.control.published(),
    };
    let mut response = axum::Json(feed::build(&inputs, slice, unix_ms())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The admin API's token rule, for a browser too: the bearer header, the
/// cookie `/?token=` set, or (on `/` only) the `?token=` being exchanged.
async fn require_token(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &dashboard.token else { return next.run(request).await };
    let query_token = (request.uri().path() == "/")
        .then(|| Query::<PageQuery>::try_from_uri(request.uri()).ok())
        .flatten()
        .and_then(|query| query.0.token);
    let presented = match &query_token {
        Some(presented) => Presented::Query(presented.as_str()),
        None => presented(&headers),
    };
    if presented.matches(token) {
        return next.run(request).await;
    }
    let why = match presented {
        Presented::Query(_) => "the token in ?token= is not the admin token",
        Presented::Nothing => "this dashboard requires the admin token",
        _ => "the token presented is not the admin token",
    };
    error(
        StatusCode::UNAUTHORIZED,
        format!(
            "{why}: open /?token=<token> once (the token is in <state-dir>/admin-token; it is kept in an HttpOnly cookie), \
             or send `Authorization: Bearer <token>`"
        ),
    )
}

/// What a request presented to prove it may read the dashboard.
#[derive(Debug)]
enum Presented<'a> {
    Query(&'a str),
    Bearer(&'a str),
    Cookie(String),
    Nothing,
}

impl Presented<'_> {
    fn matches(&self, token: &BearerToken) -> bool {
        match self {
            Presented::Query(text) => token.is_presented_by(&format!("Bearer {text}")),
            Presented::Bearer(header) => token.is_presented_by(header),
            Presented::Cookie(text) => token.is_presented_by(&format!("Bearer {text}")),
            Presented::Nothing => false,
        }
    }
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return Presented::Bearer(value);
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    for pair in cookies.flat_map(|line| line.split(';')) {
        if let Some((name, value)) = pair.trim().split_once('=')
            && name == COOKIE
            && let Some(text) = unhex(value)
        {
            return Presented::Cookie(text);
        }
    }
    Presented::Nothing
}

/// The token travels hex-encoded in the cookie: a token may hold characters
/// (`;`, `,`, `"`) that a cookie value cannot.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let decoded: Option<Vec<u8>> = bytes
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect();
    String::from_utf8(decoded?).ok()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(crate::admin::ErrorBody { errors: vec![message] })).into_response()
}

#[cfg(test)]
mod tests;
