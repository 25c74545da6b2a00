//! Fault injection: stray and unauthenticated clients on the ports gateways
//! use. A real Envoy 1.40 runs revgate's filter, programmed by the real
//! `revgate serve`; the strays are raw ADS clients (tonic + envoy-types) and
//! plain HTTP clients.
//!
//! | fault injected | what revgate promises |
//! |---|---|
//! | an xDS client with an unknown node id subscribes, NACKs and disconnects | Services show `GatewayRejected` only while it counts; once its grace passes they are Ready again and `revgate get gateway` no longer lists it, while the real Envoy keeps serving |
//! | xDS and activation bound beyond loopback; clients without the gateway token, or with a wrong one | gRPC `UNAUTHENTICATED` / HTTP 401 naming what is missing, nothing served; the Envoy started from `revgate render envoy --ads` and its filter present the token, connect, serve, and hold and release requests for a revision at zero |
//! | xDS with mutual TLS; clients in plaintext, without a certificate, or with one from another CA | not served; a certificate the CA signed (and the token) is, and Envoy from `render envoy --ads --tls-*` serves |
//! | `revgate controller` bound beyond loopback without a gateway token | refuses to start, naming the flag, the variable and the Secret |

mod support;

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc;
use serde_json::Value;
use support::{Backend, Envoy, Revgate, free_port, stderr, stdout, wait_for};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const STRAY: &str = "stray-client";

/// A Service with no endpoints yet: its revision `cold-00001` is at zero.
const COLD_SERVICE: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: cold
spec:
  template:
    spec:
      containers:
      - image: example.com/cold:v1
"#;

/// A raw SotW ADS stream.
struct Ads {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Opens a stream to `addr` presenting `authorization`, or the refusal.
    async fn open(addr: SocketAddr, authorization: Option<&str>) -> Result<Ads, tonic::Status> {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.expect("connecting to xDS");
        let (requests, rx) = mpsc::channel(4);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().expect("metadata value"));
        }
        let responses = client.stream_aggregated_resources(request).await?.into_inner();
        Ok(Ads { requests, responses })
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.expect("stream open");
    }

    /// Subscribes to every cluster as `node` and returns the first answer.
    async fn subscribe_clusters(&mut self, node: &str) -> DiscoveryResponse {
        let node = Node { id: node.to_owned(), cluster: "stray".to_owned(), ..Default::default() };
        self.send(DiscoveryRequest { node: Some(node), type_url: CDS.to_owned(), ..Default::default() }).await;
        let answer = tokio::time::timeout(support::DEADLINE, self.responses.message()).await;
        answer.expect("a CDS response in time").expect("a CDS response").expect("the stream stays open")
    }

    /// Rejects `response` as Envoy would.
    async fn nack(&self, response: &DiscoveryResponse) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(rpc::Status { code: 3, message: "stray rejection".to_owned(), details: vec![] }),
            ..Default::default()
        })
        .await;
    }
}

/// Envoy on the bootstrap `revgate render envoy --ads` prints for `revgate`,
/// reaching xDS at `xds` and taking the gateway token from its state directory.
async fn envoy_from_rendered_bootstrap(dir: &Path, revgate: &Revgate, xds: SocketAddr) -> Envoy {
    let admin_port = free_port();
    let node_id = format!("gateway-{admin_port}");
    let state_dir = revgate.state_dir.display().to_string();
    let (xds, admin) = (xds.to_string(), admin_port.to_string());
    let args = ["render", "envoy", "--ads", "--node-id", &node_id, "--xds-addr", &xds, "--admin-port", &admin];
    let out = revgate.cli(&[&args[..], &["--delta", "--state-dir", &state_dir]].concat());
    assert!(out.status.success(), "revgate render envoy --ads failed: {}", stderr(&out));
    assert!(stdout(&out).contains("initial_metadata"), "the bootstrap presents the token:\n{}", stdout(&out));
    let bootstrap = dir.join(format!("envoy-{admin_port}.yaml"));
    std::fs::write(&bootstrap, &out.stdout).expect("writing the bootstrap");
    Envoy::start(dir, &bootstrap, admin_port, revgate.http_port, &node_id).await
}

/// The reason of the Service's `Ready` condition ("" when True).
async fn ready(revgate: &Revgate, name: &str) -> (String, String) {
    let services = revgate.get_json(&format!("/v1/services?namespace=default&name={name}")).await;
    let conditions = services.pointer("/0/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let field = |key: &str| ready.and_then(|c| c.get(key)).and_then(Value::as_str).unwrap_or_default().to_owned();
    (field("status"), field("reason"))
}

/// Fields drop in order: the processes go before the directory holding their logs.
struct Setup {
    backend: Backend,
    envoy: Envoy,
    revgate: Revgate,
    _dir: tempfile::TempDir,
}

/// Fault: a client with an unknown node id reaches the xDS port (on
/// loopback, where no token is required), subscribes, rejects what it is
/// sent, and disconnects. Promise: while it counts, Services say
/// `GatewayRejected`; after the disconnect grace it no longer counts:
/// Services are Ready again and `revgate get gateway` no longer lists it.
/// The real Envoy stays connected and keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_xds_client_that_nacks_and_leaves_stops_counting() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let revgate = Revgate::start(&dir.path().join("state"), free_port()).await;
    let envoy = envoy_from_rendered_bootstrap(dir.path(), &revgate, revgate.xds_addr).await;
    let backend = Backend::start("hello").await;
    revgate.apply(&support::hello_on(&backend));
    revgate.wait_acked(&envoy.node_id).await;
    let s = Setup { backend, envoy, revgate, _dir: dir };
    s.envoy.wait_body("hello.default.example.com", &[], "hello").await;
    wait_for("the Service to be Ready", async || (ready(&s.revgate, "hello").await.0 == "True").then_some(())).await;

    let mut stray = Ads::open(s.revgate.xds_addr, None).await.expect("loopback needs no token");
    let clusters = stray.subscribe_clusters(STRAY).await;
    stray.nack(&clusters).await;
    wait_for("the stray NACK to show in the Service's status", async || {
        (ready(&s.revgate, "hello").await == ("False".to_owned(), "GatewayRejected".to_owned())).then_some(())
    })
    .await;
    drop(stray);

    let gateway = wait_for("the stray client to be shown disconnected", async || {
        let view = s.revgate.gateway().await;
        (view.pointer(&format!("/status/nodes/{STRAY}/connected"))? == &Value::Bool(false)).then_some(view)
    })
    .await;
    assert!(gateway.pointer(&format!("/status/nodes/{STRAY}/disconnected_at")).is_some(), "{gateway:#}");
    wait_for("the Service to be Ready again once the stray's grace passed", async || {
        (ready(&s.revgate, "hello").await.0 == "True").then_some(())
    })
    .await;
    let listed = stdout(&s.revgate.cli(&["get", "gateway"]));
    assert!(!listed.contains(STRAY), "the stray node is gone from `get gateway`:\n{listed}");
    assert!(listed.contains(&s.envoy.node_id), "the real Envoy is still listed:\n{listed}");

    let counts = s.envoy.tally("hello.default.example.com", 20).await;
    assert_eq!(counts.get("hello"), Some(&20), "the real Envoy kept serving: {counts:?}");
    drop(s.backend);
}

/// Fault: the xDS server and the activation service are bound beyond
/// loopback (`0.0.0.0`), and clients come without the gateway token or with
/// a wrong one. Promise: they are refused (gRPC `UNAUTHENTICATED`, HTTP 401)
/// with a message naming what is missing; the Envoy started from the
/// rendered bootstrap presents the token, is programmed and serves, and its
/// filter's calls carry the token: a request for a revision at zero is held
/// and released once the revision has an endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_only_gateways_with_the_token_are_served() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("state");
    let (xds_port, activation_port) = (free_port(), free_port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let bound: SocketAddr = format!("0.0.0.0:{xds_port}").parse().expect("address");
    let extra = [
        "--activation-addr".to_owned(),
        format!("0.0.0.0:{activation_port}"),
        "--wasm-filter".to_owned(),
        support::filter_wasm().display().to_string(),
    ];
    let revgate = Revgate::start_with(&state, free_port(), admin_addr, bound, &extra).await;
    let token = std::fs::read_to_string(state.join("gateway-token")).expect("serve creates the gateway token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("gateway-token")).expect("token file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token is readable by its owner only");
    }

    // xDS: the check is on the bound address; clients connect through loopback.
    let xds: SocketAddr = format!("127.0.0.1:{xds_port}").parse().expect("address");
    let refused = Ads::open(xds, None).await.err().expect("refused without a token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("authorization: Bearer"), "names what is missing: {}", refused.message());
    let refused = Ads::open(xds, Some("Bearer not-the-gateway-token")).await.err().expect("refused with a wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut served = Ads::open(xds, Some(&format!("Bearer {token}"))).await.expect("served with the token");
    served.subscribe_clusters("token-holder").await;
    drop(served);

    // Activation: HTTP 401 without the token, with a body that says why.
    let readiness = format!("http://127.0.0.1:{activation_port}/activation/v1/readiness?after=0&node=x");
    let http = reqwest::Client::new();
    let response = http.get(&readiness).send().await.expect("activation service");
    assert_eq!(response.status().as_u16(), 401);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("authorization: Bearer") && body.contains("activation service"), "{body}");
    let response = http.get(&readiness).bearer_auth("not-the-gateway-token").send().await.expect("activation");
    assert_eq!(response.status().as_u16(), 401);

    // A real Envoy from the rendered bootstrap connects and serves.
    let envoy = envoy_from_rendered_bootstrap(dir.path(), &revgate, xds).await;
    let backend = Backend::start("hello").await;
    revgate.apply(&support::hello_on(&backend));
    revgate.apply(COLD_SERVICE);
    revgate.wait_acked(&envoy.node_id).await;
    let s = Setup { backend, envoy, revgate, _dir: dir };
    s.envoy.wait_body("hello.default.example.com", &[], "hello").await;

    // Held and released: the filter's polls and activations carry the token.
    let client = s.envoy.client();
    let held = tokio::spawn(async move { client.get("cold.default.example.com", "/").await });
    wait_for("the filter's activation of cold-00001", async || {
        let activity = s.revgate.activity("cold-00001").await?;
        (activity.get("activations")?.as_u64()? >= 1).then_some(())
    })
    .await;
    assert!(!held.is_finished(), "the request is held while the revision has no endpoint");
    let cold_backend = Backend::start("cold").await;
    s.revgate.set_endpoints("cold-00001", &[cold_backend.addr]).await;
    let reply = held.await.expect("request task");
    assert_eq!((reply.status, reply.body.as_str()), (200, "cold"), "{reply:?}");
    drop(s.backend);
}

/// Fault: cluster mode's activation API (bound to `0.0.0.0:9091` by
/// default) is started without a gateway token. Promise: the controller
/// refuses to start, before contacting Kubernetes, naming the flag, the
/// variable and the Secret; `render istio --gateway-token-file` puts the
/// token in the WasmPlugin's pluginConfig, and without it the output has none.
#[test]
fn cluster_mode_refuses_an_unauthenticated_activation_api() {
    let out = std::process::Command::new(support::revgate_bin())
        .args(["controller", "--activation-addr", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0"])
        .env_remove("REVGATE_GATEWAY_TOKEN")
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("running revgate controller");
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("--gateway-token-file")
            && message.contains("REVGATE_GATEWAY_TOKEN")
            && message.contains("revgate-gateway-token"),
        "{message}"
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "cluster-gateway-token-0123456789\n").expect("writing the token");
    let sample = support::repo_root().join("examples/hello-split.yaml");
    let render = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(support::revgate_bin())
            .args(["render", "istio", "-f"])
            .arg(&sample)
            .args(extra)
            .output()
            .expect("running revgate render istio");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let with = render(&["--gateway-token-file".as_ref(), token_file.as_os_str()]);
    assert!(with.contains("token: cluster-gateway-token-0123456789"), "{with}");
    assert!(!render(&[]).contains("token:"), "no token unless asked for");
}

/// PEM files of a test PKI: a CA, the xDS server's certificate (for
/// `127.0.0.1`) and a gateway's client certificate, plus a client
/// certificate from another CA.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    stranger_cert: std::path::PathBuf,
    stranger_key: std::path::PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            (cert, Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose| {
            let mut params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("parameters");
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            (params.signed_by(&key, issuer).expect("certificate").pem(), key.serialize_pem())
        };
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("writing PEM");
            path
        };
        let (ca_cert, issuer) = ca("revgate test CA");
        let (_, other) = ca("someone else's CA");
        let (server_cert, server_key) = leaf(&issuer, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(&issuer, &["gateway"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger_cert, stranger_key) = leaf(&other, &["stranger"], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger-key.pem", &stranger_key),
        }
    }
}

/// Opens an ADS stream over TLS to `xds`, presenting `identity` (PEM files)
/// and the token, and waits for the first CDS response.
async fn ads_over_tls(xds: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>, token: &str) -> Result<(), String> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let read = |path: &Path| std::fs::read(path).expect("reading PEM");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca))).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let channel = Channel::from_shared(format!("https://{xds}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let (requests, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    let node = Node { id: "tls-client".to_owned(), ..Default::default() };
    requests
        .send(DiscoveryRequest { node: Some(node), type_url: CDS.to_owned(), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(request)
        .await
        .map_err(|e| format!("stream: {e:?}"))?
        .into_inner();
    match tokio::time::timeout(support::DEADLINE, responses.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        other => Err(format!("no CDS response: {other:?}")),
    }
}

/// Fault: clients reach an xDS port that speaks mutual TLS with a given CA
/// (bound beyond loopback): in plaintext, without a client certificate, or
/// with one another CA signed. Promise: none of them is served; a gateway
/// with a certificate the CA signed (and the token) is, and the Envoy
/// started from `revgate render envoy --ads --tls-*` connects and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_gateways_with_a_certificate_the_ca_signed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::create(dir.path());
    let state = dir.path().join("state");
    let xds_port = free_port();
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let bound: SocketAddr = format!("0.0.0.0:{xds_port}").parse().expect("address");
    let path = |p: &Path| p.display().to_string();
    let extra = [
        "--activation-addr".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--xds-tls-cert".to_owned(),
        path(&pki.server_cert),
        "--xds-tls-key".to_owned(),
        path(&pki.server_key),
        "--xds-client-ca".to_owned(),
        path(&pki.ca),
    ];
    let revgate = Revgate::start_with(&state, free_port(), admin_addr, bound, &extra).await;
    let token = std::fs::read_to_string(state.join("gateway-token")).expect("gateway token");
    let xds: SocketAddr = format!("127.0.0.1:{xds_port}").parse().expect("address");

    assert!(Ads::open(xds, Some(&format!("Bearer {token}"))).await.is_err(), "plaintext is not served");
    let anonymous = ads_over_tls(xds, &pki.ca, None, &token).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = ads_over_tls(xds, &pki.ca, Some((&pki.stranger_cert, &pki.stranger_key)), &token).await;
    assert!(stranger.is_err(), "a certificate from another CA: {stranger:?}");
    let gateway = ads_over_tls(xds, &pki.ca, Some((&pki.client_cert, &pki.client_key)), &token).await;
    assert_eq!(gateway, Ok(()), "a certificate the CA signed, and the token");

    let admin_port = free_port();
    let node_id = format!("gateway-{admin_port}");
    let (xds_text, admin) = (xds.to_string(), admin_port.to_string());
    let out = revgate.cli(&[
        "render",
        "envoy",
        "--ads",
        "--node-id",
        &node_id,
        "--xds-addr",
        &xds_text,
        "--admin-port",
        &admin,
        "--state-dir",
        &path(&state),
        "--tls-ca",
        &path(&pki.ca),
        "--tls-cert",
        &path(&pki.client_cert),
        "--tls-key",
        &path(&pki.client_key),
    ]);
    assert!(out.status.success(), "revgate render envoy --ads --tls-* failed: {}", stderr(&out));
    let bootstrap = dir.path().join("envoy-tls.yaml");
    std::fs::write(&bootstrap, &out.stdout).expect("writing the bootstrap");
    let envoy = Envoy::start(dir.path(), &bootstrap, admin_port, revgate.http_port, &node_id).await;
    let backend = Backend::start("hello").await;
    revgate.apply(&support::hello_on(&backend));
    revgate.wait_acked(&envoy.node_id).await;
    let s = Setup { backend, envoy, revgate, _dir: dir };
    s.envoy.wait_body("hello.default.example.com", &[], "hello").await;
    drop(s.backend);
}
