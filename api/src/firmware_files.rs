//! Uploaded firmware files on disk (`data_dir/firmware`): `NAME.bin`, the
//! content, and `NAME.json`, its record, written last so a file counts
//! only when whole; and each content ever uploaded under its SHA-256
//! (`sha256/HEX.bin`), which is what a campaign pins and serves, so a file
//! uploaded again under the same name never changes what a running
//! campaign flashes. The HTTP face writes and serves them
//! (`routes::firmware`); a firmware campaign looks them up.

use std::path::{Path as FsPath, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An uploaded firmware file as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirmwareFile {
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub uploaded_at: String,
}

/// Names become file names: a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

pub fn content_path(dir: &FsPath, name: &str) -> PathBuf {
    dir.join(format!("{name}.bin"))
}

pub fn meta_path(dir: &FsPath, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The content whose SHA-256 is `sha256` (lower-case hex).
pub fn pinned_path(dir: &FsPath, sha256: &str) -> Option<PathBuf> {
    wire::is_sha256_hex(sha256).then(|| dir.join("sha256").join(format!("{sha256}.bin")))
}

/// The file's record, if it was uploaded whole.
pub fn find(dir: &FsPath, name: &str) -> Option<FirmwareFile> {
    if !valid_name(name) || !content_path(dir, name).is_file() {
        return None;
    }
    serde_json::from_slice(&std::fs::read(meta_path(dir, name)).ok()?).ok()
}
