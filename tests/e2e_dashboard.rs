//! End to end: the live dashboard, rendered by a real headless Chromium from
//! a running `revgate up` (real Envoy, real filter, the hello-world app split
//! 50/50 under two tags, `examples/hello-blue-green.yaml`).
//!
//! Chromium comes from `scripts/install-tools.sh` (the Debian package
//! `chromium`); `$REVGATE_CHROMIUM` names another binary. The screenshot is
//! saved as `<target>/e2e_dashboard/dashboard.png`; with
//! `REVGATE_UPDATE_SCREENSHOT=1` it also replaces the README's
//! `tests/screenshots/dashboard.png`.
//!
//! Run: `cargo test -p revgate --test e2e_dashboard -- --nocapture`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Up, repo_root, revgate_bin, wait_for};

const MANIFESTS: &str = include_str!("../examples/hello-blue-green.yaml");

/// How long one Chromium run may take, start to exit.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary: `$REVGATE_CHROMIUM`, or `chromium` on PATH. Missing
/// Chromium fails the test with the command that installs it.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("REVGATE_CHROMIUM") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "Chromium is not installed: run scripts/install-tools.sh --test (it installs the Debian package \
             `chromium` with apt-get), or set REVGATE_CHROMIUM"
        )
    })
}

/// Headless Chromium with a profile of its own, removed with it.
struct Browser {
    bin: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    fn new() -> Self {
        Self { bin: chromium(), profile: tempfile::tempdir().expect("a browser profile directory") }
    }

    /// Loads `url` and runs its scripts for `budget` of the page's (virtual)
    /// time, then does `action` (`--dump-dom`, `--screenshot=…`); stdout.
    async fn run(&self, url: &str, action: &str) -> String {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(["--window-size=1280,720", "--virtual-time-budget=5000", action, url])
            .kill_on_drop(true);
        let output = tokio::time::timeout(BROWSER_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("Chromium did not finish within {BROWSER_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        assert!(
            output.status.success(),
            "Chromium failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The element that opens with `start` (an attribute unique to it) up to the
/// end of `tag`, or `None`.
fn element<'a>(dom: &'a str, start: &str, tag: &str) -> Option<&'a str> {
    let from = dom.find(start)?;
    let rest = &dom[from..];
    let end = rest.find(&format!("</{tag}>"))?;
    Some(&rest[..end])
}

/// The text of the first element after `marker` in `html`.
fn text_after<'a>(html: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &html[html.find(marker)?..];
    let rest = &rest[rest.find('>')? + 1..];
    Some(&rest[..rest.find('<')?])
}

/// Requests through the gateway until stopped, so that the page shows live
/// rates while the browser renders it.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(up: &Up) -> Self {
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let client = up.client();
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get("hello.default.example.com", "/").await;
                    assert_eq!(reply.status, 200, "the split serves: {reply:?}");
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { stop, sent, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load task");
        self.sent.load(Ordering::Relaxed)
    }
}

fn screenshot_path() -> PathBuf {
    // `<target>/debug/revgate` → `<target>/e2e_dashboard/`.
    let target = revgate_bin().parent().and_then(Path::parent).map(Path::to_path_buf).expect("the target directory");
    let dir = target.join("e2e_dashboard");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir.join("dashboard.png")
}

/// What a user sees on opening the dashboard of `revgate up` with a 50/50
/// split under two tags while requests flow: the Service, its bar with both
/// percentages and tags, each tag's URL, both revisions with their traffic,
/// scale and a live request rate, and the gateway with its ACKed versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_split_revisions_and_live_traffic_in_a_real_browser() {
    let browser = Browser::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let up = Up::start(dir.path(), MANIFESTS).await;
    let dashboard = format!("http://127.0.0.1:{}/", up.admin_port);
    assert!(
        up.log().contains(&format!("Dashboard  {dashboard}")),
        "revgate up prints the dashboard URL:\n{}",
        up.log()
    );

    let load = Load::start(&up);
    // Live figures once both revisions are reported, and a few points of history.
    wait_for("the feed to show traffic on both revisions and history", async || {
        let feed = up.get_json("/dashboard/feed").await;
        let live = |name: &str| {
            feed["revisions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == name && r["live"]["rps"].as_f64() > Some(0.0))
        };
        let points = feed["history"]["points"].as_array().map_or(0, Vec::len);
        (live("hello-00001") && live("hello-00002") && points >= 6).then_some(())
    })
    .await;

    let started = Instant::now();
    let dom = wait_for("Chromium to render the dashboard with data", async || {
        let dom = browser.run(&dashboard, "--dump-dom").await;
        (dom.contains(r#"data-state="live""#) && dom.contains(r#"data-route="default/hello""#)).then_some(dom)
    })
    .await;
    println!("rendered by Chromium in {:.1} s", started.elapsed().as_secs_f64());

    let card = element(&dom, r#"data-route="default/hello""#, "article").expect("the hello Service's card");
    assert!(card.contains("http://hello.default.example.com"), "the Service's URL: {card}");
    for (revision, tag) in [("hello-00001", "current"), ("hello-00002", "candidate")] {
        let segment = format!(r#"data-revision="{revision}" data-percent="50" data-tag="{tag}""#);
        assert!(card.contains(&segment), "the bar has {revision} at 50% tagged {tag}: {card}");
        assert_eq!(text_after(card, &segment), Some(&*format!("{tag} 50%")), "the segment's label: {card}");
        let url = format!("http://{tag}-hello.default.example.com");
        assert!(card.contains(&format!(r#"href="{url}""#)), "the tag's URL {url}: {card}");

        let row = element(&dom, &format!(r#"<tr data-revision="default/{revision}""#), "tr")
            .unwrap_or_else(|| panic!("a row for {revision}: {dom}"));
        assert!(row.contains("service hello"), "{row}");
        assert!(row.contains(">Ready<"), "{revision} is Ready: {row}");
        assert!(row.contains(">50%<"), "{revision} takes 50% of the traffic: {row}");
        assert!(row.contains("<polyline"), "{revision} has a request-rate sparkline: {row}");
        let rate: f64 = text_after(row, r#"class="rate""#)
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("a request rate for {revision}: {row}"));
        assert!(rate > 0.0, "{revision} shows its live request rate: {row}");
        println!("{revision}: {rate} requests/s on the page");
    }
    let gateway = element(&dom, r#"data-node="revgate-gateway""#, "tr").expect("the gateway's row");
    assert!(gateway.contains(">connected<") && gateway.contains("CDS"), "the gateway and its ACKs: {gateway}");

    let path = screenshot_path();
    let _ = std::fs::remove_file(&path);
    browser.run(&dashboard, &format!("--screenshot={}", path.display())).await;
    let png =
        std::fs::read(&path).unwrap_or_else(|e| panic!("Chromium wrote no screenshot at {}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    println!("screenshot: {} ({} KB)", path.display(), png.len() / 1024);
    if std::env::var_os("REVGATE_UPDATE_SCREENSHOT").is_some() {
        let committed = repo_root().join("tests/screenshots/dashboard.png");
        std::fs::write(&committed, &png).unwrap_or_else(|e| panic!("writing {}: {e}", committed.display()));
        println!("updated {}", committed.display());
    }
    let sent = load.stop().await;
    println!("{sent} requests sent while the page was open");
}
