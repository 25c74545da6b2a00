//! Reading manifests from disk, in the order `kubectl apply -f` uses.
//!
//! The CLI sends file contents with their names to the admin API, which
//! parses and validates them; errors therefore name the user's own paths.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One manifest file as sent to the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The path as the user gave it (or as found in a directory).
    pub name: String,
    pub content: String,
}

/// Reads every path in argument order; a directory contributes its
/// `.yaml`, `.yml` and `.json` files in name order (not recursive).
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<ManifestFile>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading directory {}", path.display()))?;
            entries.retain(|p| p.is_file() && is_manifest(p));
            entries.sort();
            if entries.is_empty() {
                bail!("{}: no .yaml, .yml or .json files in this directory", path.display());
            }
            for entry in entries {
                files.push(read_one(&entry)?);
            }
        } else {
            files.push(read_one(path)?);
        }
    }
    Ok(files)
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn read_one(path: &Path) -> anyhow::Result<ManifestFile> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ManifestFile { name: path.display().to_string(), content })
}
