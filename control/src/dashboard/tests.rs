//! The dashboard's routes, served in-process on `127.0.0.1:0` inside the
//! whole admin router, against a real owner task and activation service.

use std::net::SocketAddr;

use revgate_xds::server::{GatewayStatus, SnapshotCache};
use revgate_xds::translate::XdsSettings;
use serde_json::Value;
use tokio::sync::broadcast;

use super::*;
use crate::admin::server::{AdminState, router as admin_router};
use crate::control::ControlPlane;
use crate::manifests::ManifestFile;
use crate::store::Store;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

use crate::testing::HELLO_TAGGED_SPLIT as SPLIT;

/// The admin API with `hello` split 50/50, served until the test ends.
struct Admin {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Admin {
    async fn start(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store");
        let (_gateway, gateway) = tokio::sync::watch::channel(GatewayStatus::default());
        let (plane, handle) =
            ControlPlane::start(store, SnapshotCache::default(), XdsSettings::default(), gateway).expect("start");
        tokio::spawn(plane.run(None));
        for (name, content) in [("v1.yaml", crate::testing::HELLO_SERVICE), ("split.yaml", SPLIT)] {
            let file = ManifestFile { name: name.into(), content: content.into() };
            handle.apply(vec![file], false).await.expect("apply");
        }
        let (_acks, acks) = broadcast::channel(1);
        let activation = ActivationService::start(handle.plan(), handle.desired(), acks);
        let metrics = crate::metrics::Exporter::new(
            crate::metrics::RevisionSources {
                activation: activation.clone(),
                kpa: None,
                control: handle.clone(),
                instances: None,
            },
            &crate::metrics::XdsMetrics::default(),
            &crate::metrics::RolloutMetrics::default(),
        );
        let state = AdminState {
            control: handle,
            activation,
            kpa: None,
            instances: None,
            token: token.map(|t| BearerToken::new(t).expect("token")),
            test_hooks: false,
            metrics: std::sync::Arc::new(metrics),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(crate::http::serve(listener, admin_router(state), "admin API"));
        Self { addr, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

async fn errors(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("an error body");
    body["errors"][0].as_str().expect("errors[0]").to_owned()
}

#[tokio::test]
async fn on_loopback_the_page_and_its_feed_need_no_token() {
    let admin = Admin::start(None).await;
    let page = client().get(admin.url("/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let policy = page.headers().get(header::CONTENT_SECURITY_POLICY).expect("a content security policy").clone();
    assert!(policy.to_str().expect("ASCII").contains("default-src 'none'"), "nothing from the network: {policy:?}");
    let html = page.text().await.expect("HTML");
    assert!(html.contains("<title>revgate</title>") && html.contains("/dashboard/feed"), "{html}");
    for outside in ["<script src", "<link", "@import", "url(http", "https://"] {
        assert!(!html.contains(outside), "no CDN, nothing loaded from outside the page: {outside}");
    }

    let feed: Value =
        client().get(admin.url("/dashboard/feed")).send().await.expect("feed").json().await.expect("JSON");
    let traffic = &feed["routes"][0]["traffic"];
    assert_eq!(traffic[0]["percent"], 50, "{feed}");
    assert_eq!(traffic[1]["tag"], "candidate", "{feed}");
    assert_eq!(feed["revisions"].as_array().map(Vec::len), Some(2), "{feed}");
}

#[tokio::test]
async fn beyond_loopback_a_browser_presents_the_token_once_and_keeps_it_in_a_cookie() {
    let admin = Admin::start(Some(TOKEN)).await;
    let http = client();

    let refused = http.get(admin.url("/")).send().await.expect("page");
    assert_eq!(refused.status(), 401);
    let message = errors(refused).await;
    assert!(message.contains("/?token=") && message.contains("admin-token"), "says how to pass it: {message}");
    let wrong = http.get(admin.url("/?token=not-the-token-at-all")).send().await.expect("page");
    assert_eq!(wrong.status(), 401);
    assert!(errors(wrong).await.contains("?token= is not the admin token"));
    assert_eq!(http.get(admin.url("/dashboard/feed")).send().await.expect("feed").status(), 401);

    let exchanged = http.get(admin.url(&format!("/?token={TOKEN}"))).send().await.expect("page");
    assert_eq!(exchanged.status(), 303, "the token leaves the address bar");
    assert_eq!(exchanged.headers()[header::LOCATION], "/");
    let cookie = exchanged.headers()[header::SET_COOKIE].to_str().expect("ASCII").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "not the token as it is typed: {cookie}");
    let pair = cookie.split(';').next().expect("name=value").to_owned();

    let page = http.get(admin.url("/")).header(header::COOKIE, &pair).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let feed = http.get(admin.url("/dashboard/feed")).header(header::COOKIE, &pair).send().await.expect("feed");
    assert_eq!(feed.status(), 200);
    let bearer = http.get(admin.url("/dashboard/feed")).bearer_auth(TOKEN).send().await.expect("feed");
    assert_eq!(bearer.status(), 200, "the API's header works too");

    // The cookie opens the dashboard's read-only routes, not the API.
    let api = http.get(admin.url("/v1/services")).header(header::COOKIE, &pair).send().await.expect("API");
    assert_eq!(api.status(), 401);
}

#[tokio::test]
async fn a_cursor_that_is_not_a_number_is_named() {
    let admin = Admin::start(None).await;
    let response = client().get(admin.url("/dashboard/feed?since=yesterday")).send().await.expect("feed");
    assert_eq!(response.status(), 400);
    let message = errors(response).await;
    assert!(message.contains("since=\"yesterday\"") && message.contains("history.cursor"), "{message}");
}

/// The sampler records a point as soon as it starts, so a page opened at
/// once already has a history cursor to continue from.
#[tokio::test]
async fn the_feed_carries_the_history_the_sampler_records() {
    let admin = Admin::start(None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let feed: Value =
            client().get(admin.url("/dashboard/feed")).send().await.expect("feed").json().await.expect("JSON");
        let history = &feed["history"];
        assert_eq!(history["windowMs"], 300_000);
        assert_eq!(history["intervalMs"], 2_000);
        if history["cursor"].as_u64() >= Some(1) {
            assert!(history["points"].as_array().is_some_and(|points| !points.is_empty()), "{feed}");
            let cursor = history["cursor"].as_u64().unwrap_or_default();
            let next: Value = client()
                .get(admin.url(&format!("/dashboard/feed?since={cursor}")))
                .send()
                .await
                .expect("feed")
                .json()
                .await
                .expect("JSON");
            assert_eq!(next["history"]["reset"], false, "{next}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no history point within 10 s: {feed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
