//! Errors of setting a runtime up. Problems of one revision (an unmapped
//! image, a crashing process) are not errors: they are reported in its
//! [`RevisionState`](crate::RevisionState) so that the rest keeps running.

use std::path::PathBuf;

/// Why a runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("reading the image map {}: {source}; pass an existing YAML file with --images FILE", path.display())]
    ImageMapRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "parsing the image map {file}: {source}; expected a YAML mapping from image to program, \
         e.g. `ghcr.io/knative/helloworld-go: ./target/debug/helloworld`"
    )]
    ImageMapSyntax {
        /// The file, or `(inline)` for text given to `ImageMap::parse`.
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },

    #[error("image map {file}: entry {key:?}: {problem}")]
    ImageMapEntry {
        file: String,
        /// The image reference as written (empty if the key itself is the problem).
        key: String,
        problem: String,
    },

    #[error("creating the log directory {}: {source}; choose a writable directory for instance logs", path.display())]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the runtime record {} is held by another running revgate on the same state directory; stop that one, \
         or give this one another --state-dir",
        path.display()
    )]
    RecordInUse { path: PathBuf },

    #[error("opening the runtime record {}: {source}; the state directory must be writable", path.display())]
    RecordOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("starting the process runtime outside a Tokio runtime; call ProcessRuntime::start from async code")]
    NoAsyncRuntime,
}
