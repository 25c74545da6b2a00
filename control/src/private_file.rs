//! Files that hold secrets — the admin token, the gateway token, the Envoy
//! bootstrap that carries the gateway token — written one way: readable by
//! the owner only from the first byte, and whole or not at all.
//!
//! [`write`] writes a new file beside the target (created with mode 0600,
//! never an existing one), syncs it and renames it over the target: a crash
//! leaves the old file or the new one, never an empty or partial one that
//! every later start would stumble on.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use revgate_xds::BearerToken;
use revgate_xds::server::auth::TokenError;

/// Why a token file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("creating the token {path}: {source} (is the state directory writable?)")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the token in {path} is unusable: {source} (remove the file to have a new one created)")]
    Invalid { path: PathBuf, source: TokenError },
}

/// The token in `path`, created on first use: 32 random bytes, hex,
/// readable by the owner only.
pub fn read_or_create_token(path: &Path) -> Result<BearerToken, TokenFileError> {
    let invalid = |source| TokenFileError::Invalid { path: path.to_path_buf(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => return BearerToken::new(&text).map_err(invalid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TokenFileError::Read { path: path.to_path_buf(), source }),
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write(path, &token).map_err(|source| TokenFileError::Create { path: path.to_path_buf(), source })?;
    BearerToken::new(&token).map_err(invalid)
}

/// Replaces `path` with `content`, readable and writable by the owner only,
/// atomically: through a file beside it, synced, then renamed over it.
pub fn write(path: &Path, content: &str) -> std::io::Result<()> {
    let temporary = temporary_path(path)?;
    let written = write_new(&temporary, content).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    // The rename itself survives a crash once the directory is synced.
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// A name beside `path`, unique to this write: `.<name>.<random>.tmp`.
fn temporary_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    let suffix: u64 = rand::random();
    Ok(path.with_file_name(format!(".{}.{suffix:016x}.tmp", name.to_string_lossy())))
}

/// Creates `path` (never opening an existing file) with mode 0600 and
/// writes `content` to disk.
fn write_new(path: &Path, content: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// The files in `dir` (no temporary one left behind).
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_private_file_is_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envoy.yaml");
        write(&path, "first").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "first");
        assert_eq!(mode(&path), 0o600);

        // An existing file, even a readable one, is replaced by an owner-only one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&path, "second").expect("rewritten");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "second");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["envoy.yaml"]);
    }

    #[test]
    fn a_failed_write_leaves_neither_a_partial_target_nor_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Renaming over a directory fails after the temporary file was written.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::write(path.join("inside"), "x").expect("write");
        write(&path, "secret").expect_err("a directory is in the way");
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn a_token_file_is_created_once_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin-token");
        let created = read_or_create_token(&path).expect("created");
        assert_eq!(created.expose().len(), 64);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_or_create_token(&path).expect("read back"), created);

        std::fs::write(&path, "\n").expect("emptied");
        let refused = read_or_create_token(&path).expect_err("an empty token");
        assert!(matches!(refused, TokenFileError::Invalid { source: TokenError::Empty, .. }), "{refused}");
    }
}
