//! Load: `oha` for HTTP load with latency percentiles (fixed rate with
//! latency correction, or closed loop), and an in-process burst client for
//! many concurrent requests whose individual completion times matter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One `oha` run's command, for the report and for running it.
#[derive(Debug, Clone)]
pub struct Oha {
    program: PathBuf,
    args: Vec<String>,
}

/// What one `oha` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OhaReport {
    /// Successful (2xx) answers per second over the run.
    pub ok_per_sec: f64,
    /// Latency percentiles in microseconds, by name (`p50`, `p99`, `p99.9`, …).
    pub latency_us: BTreeMap<String, f64>,
    pub statuses: BTreeMap<String, u64>,
    /// Client-side errors by message, other than requests cut by the end of the run.
    pub errors: BTreeMap<String, u64>,
    pub duration_s: f64,
}

impl OhaReport {
    pub fn p(&self, name: &str) -> f64 {
        self.latency_us.get(name).copied().unwrap_or(f64::NAN)
    }

    pub fn ok(&self) -> u64 {
        self.statuses.iter().filter(|(code, _)| code.starts_with('2')).map(|(_, n)| n).sum()
    }

    pub fn not_ok(&self) -> u64 {
        self.statuses.iter().filter(|(code, _)| !code.starts_with('2')).map(|(_, n)| n).sum::<u64>()
            + self.errors.values().sum::<u64>()
    }
}

/// oha's message for requests still in flight when `-z` ends the run: the
/// load generator's own cut, not an answer of the system under test.
const DEADLINE_ABORT: &str = "aborted due to deadline";

impl Oha {
    /// `oha` against `url` with `Host: host`, without its live display, JSON out.
    pub fn new(program: &Path, url: &str, host: &str) -> Self {
        let args = vec!["--no-tui".into(), "--output-format".into(), "json".into(), "--host".into(), host.into()];
        let mut oha = Self { program: program.to_owned(), args };
        oha.args.push(url.to_owned());
        oha
    }

    /// Adds arguments before the URL.
    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        let url = self.args.pop();
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self.args.extend(url);
        self
    }

    /// Closed loop: `connections` clients, each sending its next request when the last answered.
    pub fn closed_loop(self, duration: Duration, connections: usize) -> Self {
        let (z, c) = (format!("{}s", duration.as_secs()), connections.to_string());
        self.args(["-z", &z, "-c", &c])
    }

    /// Fixed rate with latency correction: latency counts from when each
    /// request was due, so a stall is not hidden by the requests it delayed.
    pub fn fixed_rate(self, duration: Duration, connections: usize, rate: u64) -> Self {
        let (z, c, q) = (format!("{}s", duration.as_secs()), connections.to_string(), rate.to_string());
        self.args(["-z", &z, "-c", &c, "-q", &q, "--latency-correction"])
    }

    /// The command line as a user would type it (`oha` from PATH).
    pub fn display(&self) -> String {
        let quoted: Vec<String> =
            self.args.iter().map(|a| if a.contains([' ', '?', '&']) { format!("'{a}'") } else { a.clone() }).collect();
        format!("oha {}", quoted.join(" "))
    }

    /// Runs it in a blocking thread and parses its JSON.
    pub async fn run(&self) -> anyhow::Result<OhaReport> {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        let display = self.display();
        let out = tokio::task::spawn_blocking(move || command.output()).await?.context("running oha")?;
        if !out.status.success() {
            bail!("{display} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        parse_oha(&out.stdout).with_context(|| format!("reading the output of {display}"))
    }
}

/// oha's JSON: `summary.total` (s), `latencyPercentiles` (s), `statusCodeDistribution`, `errorDistribution`.
fn parse_oha(stdout: &[u8]) -> anyhow::Result<OhaReport> {
    let json: serde_json::Value = serde_json::from_slice(stdout)?;
    let duration_s = json.pointer("/summary/total").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let latency_us = json
        .get("latencyPercentiles")
        .and_then(|p| p.as_object())
        .map(|p| p.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()? * 1e6))).collect())
        .unwrap_or_default();
    let counts = |key: &str| -> BTreeMap<String, u64> {
        json.get(key)
            .and_then(|d| d.as_object())
            .map(|d| d.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default()
    };
    let statuses = counts("statusCodeDistribution");
    let mut errors = counts("errorDistribution");
    errors.retain(|message, _| !message.contains(DEADLINE_ABORT));
    let ok: u64 = statuses.iter().filter(|(code, _)| code.starts_with('2')).map(|(_, n)| n).sum();
    let ok_per_sec = if duration_s > 0.0 { ok as f64 / duration_s } else { 0.0 };
    Ok(OhaReport { ok_per_sec, latency_us, statuses, errors, duration_s })
}

/// The outcome of a burst of concurrent requests.
#[derive(Debug, Clone)]
pub struct Burst {
    /// By status (0: the request itself failed).
    pub statuses: BTreeMap<u16, usize>,
    /// When the last answer arrived.
    pub last: Instant,
    /// The first failure seen, if any: a transport error, or a non-200
    /// status with revgate's reason header and the start of the body.
    pub first_error: Option<String>,
    /// The client, whose idle connections stay open while the burst is kept.
    _client: reqwest::Client,
}

impl Burst {
    pub fn ok(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or(0)
    }
}

/// `n` concurrent GETs of `url` with `Host: host`, each on a connection of
/// its own; with `keep_open`, the connections stay open (idle) as long as
/// the returned [`Burst`] lives.
pub fn spawn_burst(url: &str, host: &str, n: usize, keep_open: bool) -> anyhow::Result<tokio::task::JoinHandle<Burst>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(if keep_open { n } else { 0 })
        .build()
        .context("building an HTTP client")?;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = client.get(url).header("host", host);
            tokio::spawn(async move {
                let result = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let reason = response.headers().get("x-revgate-reason").cloned();
                        let body = response.text().await.unwrap_or_default();
                        if status == 200 {
                            Ok(status)
                        } else {
                            let reason = reason.as_ref().and_then(|r| r.to_str().ok()).unwrap_or("-");
                            let body: String = body.chars().take(200).collect();
                            Err((status, format!("{status} (x-revgate-reason: {reason}): {}", body.trim())))
                        }
                    }
                    Err(e) => Err((0, e.to_string())),
                };
                (result, Instant::now())
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        let mut burst = Burst { statuses: BTreeMap::new(), last: Instant::now(), first_error: None, _client: client };
        let mut last = None::<Instant>;
        for task in tasks {
            let (result, at) = match task.await {
                Ok(done) => done,
                Err(e) => (Err((0, e.to_string())), Instant::now()),
            };
            last = Some(last.map_or(at, |l: Instant| l.max(at)));
            let status = match result {
                Ok(status) => status,
                Err((status, e)) => {
                    burst.first_error.get_or_insert(e);
                    status
                }
            };
            *burst.statuses.entry(status).or_insert(0) += 1;
        }
        burst.last = last.unwrap_or_else(Instant::now);
        burst
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oha_json() {
        let json = br#"{"summary":{"total":2.0},"latencyPercentiles":{"p50":0.0001,"p99.9":0.002},
            "statusCodeDistribution":{"200":100,"503":2},"errorDistribution":{"aborted due to deadline":5,"connection refused":1}}"#;
        let report = parse_oha(json).expect("parses");
        assert_eq!(report.ok(), 100);
        assert_eq!(report.not_ok(), 3, "503s and real errors count; the deadline cut does not");
        assert!((report.p("p50") - 100.0).abs() < 1e-6);
        assert!((report.p("p99.9") - 2000.0).abs() < 1e-6);
        assert!((report.ok_per_sec - 50.0).abs() < 1e-9);
    }

    #[test]
    fn displays_a_command_to_copy() {
        let oha = Oha::new(Path::new("/x/oha"), "http://127.0.0.1:1/?sleep=100", "a.default.example.com")
            .closed_loop(Duration::from_secs(10), 200);
        assert_eq!(
            oha.display(),
            "oha --no-tui --output-format json --host a.default.example.com -z 10s -c 200 'http://127.0.0.1:1/?sleep=100'"
        );
    }
}
