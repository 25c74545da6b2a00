//! Makes envoy-types' protobuf descriptors available to this crate.
//!
//! envoy-types ships a `FileDescriptorSet` of every Envoy proto at
//! `src/generated/types.bin` but does not export it. Rendering bootstrap
//! YAML (proto3 JSON needs descriptors) and hashing resources canonically
//! both need it, so this script copies it into `OUT_DIR`.
//!
//! The package directory is found with `cargo metadata`, which reports the
//! exact `manifest_path` of the envoy-types version resolved for this crate,
//! wherever the registry, a vendor directory or a `[patch]` puts it. Guessing
//! `~/.cargo/registry/...` paths would break with `CARGO_HOME`, vendoring or
//! a second registry. `REVGATE_ENVOY_DESCRIPTORS` overrides the lookup with
//! the path of a descriptor set, for builds where `cargo metadata` cannot run.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE_VAR: &str = "REVGATE_ENVOY_DESCRIPTORS";
const DESCRIPTORS_IN_PACKAGE: &str = "src/generated/types.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed={OVERRIDE_VAR}");

    let source = match locate() {
        Ok(path) => path,
        Err(message) => {
            eprintln!("error: cannot find the envoy-types descriptor set: {message}");
            eprintln!(
                "hint: run `cargo metadata --format-version 1` in control/xds to see why, or set \
                 {OVERRIDE_VAR}=/path/to/envoy-types-0.7.x/{DESCRIPTORS_IN_PACKAGE}"
            );
            std::process::exit(1);
        }
    };
    println!("cargo:rerun-if-changed={}", source.display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let target = out_dir.join("envoy_descriptors.bin");
    if let Err(err) = std::fs::copy(&source, &target) {
        eprintln!("error: copying {} to {}: {err}", source.display(), target.display());
        std::process::exit(1);
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = env::var_os(OVERRIDE_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("{OVERRIDE_VAR}={} is not a file", path.display())) };
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(&manifest_dir)
        .output()
        .map_err(|err| format!("running `{} metadata`: {err}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!("`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|err| format!("parsing `cargo metadata` output: {err}"))?;

    let manifest = envoy_types_manifest(&metadata)?;
    let package_dir =
        Path::new(&manifest).parent().ok_or_else(|| format!("envoy-types manifest path {manifest} has no parent"))?;
    let descriptors = package_dir.join(DESCRIPTORS_IN_PACKAGE);
    if descriptors.is_file() {
        Ok(descriptors)
    } else {
        Err(format!(
            "{} does not exist; this envoy-types version may not ship its descriptor set",
            descriptors.display()
        ))
    }
}

/// The manifest of the envoy-types package this crate depends on. With
/// several versions in the graph, the one in this crate's resolved
/// dependencies wins.
fn envoy_types_manifest(metadata: &serde_json::Value) -> Result<String, String> {
    let packages = metadata["packages"].as_array().ok_or("no `packages` in cargo metadata")?;
    let candidates: Vec<&serde_json::Value> = packages.iter().filter(|p| p["name"] == "envoy-types").collect();

    let own_name = env::var("CARGO_PKG_NAME").unwrap_or_default();
    let own_id = packages.iter().find(|p| p["name"] == own_name.as_str()).and_then(|p| p["id"].as_str());
    let resolved_dep = own_id.and_then(|own_id| {
        metadata["resolve"]["nodes"].as_array()?.iter().find(|node| node["id"] == own_id)?["dependencies"]
            .as_array()?
            .iter()
            .filter_map(|dep| dep.as_str())
            .find(|dep| candidates.iter().any(|p| p["id"] == *dep))
            .map(str::to_owned)
    });

    let chosen = match resolved_dep {
        Some(id) => candidates.iter().find(|p| p["id"] == id.as_str()).copied(),
        None => candidates.first().copied(),
    };
    chosen
        .and_then(|p| p["manifest_path"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| "no package `envoy-types` in cargo metadata".to_owned())
}
