//! `revgate render envoy`: Envoy bootstraps printed without a control plane.

use std::process::ExitCode;

use anyhow::Context;
use revgate_model::world::Observed;
use revgate_model::{World, parse_documents};
use revgate_xds::render::{AdsBootstrapOptions, BootstrapOptions, ads_bootstrap_yaml, static_bootstrap_yaml};
use revgate_xds::server::Api;
use revgate_xds::translate::{XdsSettings, translate};

use crate::cli::RenderEnvoyArgs;
use crate::manifests;

pub fn envoy(args: RenderEnvoyArgs) -> anyhow::Result<ExitCode> {
    if args.ads {
        let yaml = ads_bootstrap_yaml(&AdsBootstrapOptions {
            node_id: args.node_id,
            cluster: "revgate".to_owned(),
            xds_address: args.xds_addr,
            api: if args.delta { Api::Delta } else { Api::Sotw },
            admin_port: args.admin_port,
        })?;
        print!("{yaml}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut documents = Vec::new();
    for file in manifests::read_all(&args.files)? {
        documents.extend(parse_documents(&file.name, &file.content)?);
    }
    // Render exactly what `revgate serve` would publish for these manifests
    // applied to an empty control plane.
    let (world, _) = World::default().apply(&documents, 0).context("the manifests are invalid")?;
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
