//! `revgate render envoy|istio`: configuration printed without a control
//! plane or a cluster, for reviews and GitOps.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use revgate_kube::config::PluginToken;
use revgate_model::decode::Budget;
use revgate_model::world::Observed;
use revgate_model::{Manifest, OtherKinds, World, parse_documents_within};
use revgate_xds::render::{AdsBootstrapOptions, AdsTls, BootstrapOptions, ads_bootstrap_yaml, static_bootstrap_yaml};
use revgate_xds::server::Api;
use revgate_xds::translate::{XdsSettings, translate};

use crate::cli::{RenderEnvoyArgs, RenderIstioArgs};
use crate::gateway_auth;
use crate::manifests;

pub fn envoy(args: RenderEnvoyArgs) -> anyhow::Result<ExitCode> {
    if args.ads {
        let token =
            gateway_auth::for_render(args.gateway_token_file.as_deref(), gateway_auth::from_env(), &args.state_dir)?;
        if token.is_none() {
            eprintln!(
                "warning: no gateway token found (--gateway-token-file, {}, or {}): this bootstrap only works against \
                 an xDS server bound to loopback",
                gateway_auth::GATEWAY_TOKEN_ENV,
                args.state_dir.join(gateway_auth::GATEWAY_TOKEN_FILE).display()
            );
        }
        let tls = ads_tls(&args)?;
        let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
            node_id: args.node_id,
            cluster: "revgate".to_owned(),
            xds_address: args.xds_addr,
            api: if args.delta { Api::Delta } else { Api::Sotw },
            admin_port: args.admin_port,
            token,
            tls,
        })?;
        print!("{yaml}");
        return Ok(ExitCode::SUCCESS);
    }
    // Render exactly what `revgate serve` would publish for these manifests
    // applied to an empty control plane.
    let world = applied(&args.files, args.strict)?;
    let plan = world.plan(&Observed::default());
    let settings = XdsSettings { listener_port: args.http_port, ..XdsSettings::default() };
    let resources = translate(&plan, &Default::default(), &settings);
    print!(
        "{}",
        static_bootstrap_yaml(
            &resources,
            &BootstrapOptions { node_id: args.node_id, cluster: "revgate".to_owned(), admin_port: args.admin_port }
        )?
    );
    Ok(ExitCode::SUCCESS)
}

/// Mutual TLS for the ADS bootstrap, with absolute paths (Envoy runs
/// elsewhere) of files that exist.
fn ads_tls(args: &RenderEnvoyArgs) -> anyhow::Result<Option<AdsTls>> {
    let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let absolute = |path: &Path, flag: &str| {
        std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .with_context(|| format!("{flag} {}: the file cannot be read", path.display()))
    };
    Ok(Some(AdsTls {
        ca: absolute(ca, "--tls-ca")?,
        cert: absolute(cert, "--tls-cert")?,
        key: absolute(key, "--tls-key")?,
        server_name: args.tls_server_name.clone(),
    }))
}

/// `revgate render istio`: the objects cluster mode would write.
pub fn istio(args: RenderIstioArgs) -> anyhow::Result<ExitCode> {
    let world = applied(&args.files, args.strict)?;
    let mut options = revgate_istio::RenderOptions { ingress_gateway: args.gateway, ..Default::default() };
    if let Some(url) = args.wasm_url {
        options.wasm_url = url;
    }
    options.wasm_sha256 = args.wasm_sha256;
    options.validate().context("invalid option")?;
    let mut objects = revgate_istio::render(&world, &options);
    if args.at_zero {
        revgate_istio::mesh::all_through_local_gateway(&mut objects, &options);
    }
    // Only on request: the token is a secret, and without it the controller
    // adds its own when it installs the plugin.
    if let Some(token) = gateway_auth::explicit(args.gateway_token_file.as_deref(), None)? {
        let token = PluginToken::new(token.expose());
        for object in &mut objects {
            if let revgate_istio::Object::WasmPlugin(plugin) = object {
                token.add_to(plugin);
            }
        }
    }
    print!("{}", revgate_istio::to_yaml_stream(&objects)?);
    Ok(ExitCode::SUCCESS)
}

/// The manifests applied, in order, to an empty world (as `revgate apply`
/// would to a fresh control plane). Documents of kinds revgate does not
/// manage are skipped with a warning on stderr, or with `strict` refused.
fn applied(files: &[std::path::PathBuf], strict: bool) -> anyhow::Result<World> {
    let other_kinds = if strict { OtherKinds::Reject } else { OtherKinds::Skip };
    let mut budget = Budget::default();
    let mut documents = Manifest::default();
    for file in manifests::read_all(files)? {
        documents.extend(parse_documents_within(&file.name, &file.content, &mut budget, other_kinds)?);
    }
    for skipped in &documents.skipped {
        eprintln!("Warning: {skipped}");
    }
    let (world, _) = World::default().apply(&documents.objects, 0).context("the manifests are invalid")?;
    Ok(world)
}
