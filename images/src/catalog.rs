//! Importing OS images into the catalog's store. Every image is kept as
//! raw+zstd (what agents stream and decompress on the fly), with the SHA-256
//! and size of its raw content, which is what an agent verifies on disk.
//!
//! An import writes `<dest>.partial` and renames it into place only after
//! the content decoded, hashed and (when a digest was given) matched: a
//! half-written or corrupt image never becomes available.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::bootable::{Bootable, Probe};

/// The format an image arrives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SourceFormat {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "raw+zstd")]
    RawZstd,
    /// Converted to raw once, at import, by `qemu-img`.
    #[serde(rename = "qcow2")]
    Qcow2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// Size of the raw content: what lands on the disk.
    pub raw_bytes: u64,
    /// SHA-256 of the raw content, hex.
    pub sha256: String,
    /// Size of the stored raw+zstd file.
    pub stored_bytes: u64,
    /// The firmwares the content can boot under, read from it on the way.
    pub bootable: Bootable,
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("reading or writing the image: {0}")]
    Io(#[from] io::Error),
    #[error("the content is not valid zstd: {0}")]
    NotZstd(String),
    #[error("sha256 of the content is {actual}, not the {expected} given")]
    DigestMismatch { expected: String, actual: String },
    #[error("converting qcow2 with qemu-img: {0}")]
    Convert(String),
    #[error("qcow2 can only be imported from a file path (qemu-img needs to seek)")]
    Qcow2NeedsPath,
    #[error("the qcow2 names {0}: a backing or data file would be read from outside the import; flatten it first (qemu-img convert)")]
    Qcow2ReadsOtherFiles(String),
    #[error("the image is empty")]
    Empty,
}

/// zstd level for images stored from raw content: fast to compress, and
/// decompression speed (what deploys wait on) hardly depends on it.
const STORE_LEVEL: i32 = 3;
const BUF: usize = 1 << 20;

/// Stores `src` (raw or raw+zstd) at `dest` as raw+zstd. `progress` gets
/// the bytes read from `src` so far.
pub fn import_stream(
    src: impl Read,
    format: SourceFormat,
    dest: &Path,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ImportError> {
    let partial = partial_path(dest, "content");
    let probe = Probe::new(partial_path(dest, "esp"));
    let result = store(src, format, &partial, probe, progress).and_then(|imported| {
        check_digest(expected_sha256, &imported.sha256)?;
        std::fs::rename(&partial, dest)?;
        Ok(imported)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// A qcow2 may name a backing file or an external data file by any path;
/// `qemu-img convert` would read it into the image (an appliance secret,
/// say), so such a qcow2 is refused.
fn refuse_other_files(path: &Path) -> Result<(), ImportError> {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| ImportError::Convert(e.to_string()))?;
    if !output.status.success() {
        return Err(ImportError::Convert(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| ImportError::Convert(format!("qemu-img info: {e}")))?;
    let named =
        [("backing file", &info["backing-filename"]), ("data file", &info["format-specific"]["data"]["data-file"])];
    match named.iter().find(|(_, v)| !v.is_null()) {
        Some((what, file)) => Err(ImportError::Qcow2ReadsOtherFiles(format!("{what} {file}"))),
        None => Ok(()),
    }
}

/// Imports a file on the appliance's disk; qcow2 goes through `qemu-img
/// convert` into `scratch` first.
pub fn import_path(
    path: &Path,
    format: SourceFormat,
    dest: &Path,
    scratch: &Path,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ImportError> {
    if format != SourceFormat::Qcow2 {
        return import_stream(File::open(path)?, format, dest, expected_sha256, progress);
    }
    refuse_other_files(path)?;
    let raw = partial_path(&scratch.join(dest.file_name().unwrap_or_default()), "converting.raw");
    let output = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .output()
        .map_err(|e| ImportError::Convert(e.to_string()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&raw);
        return Err(ImportError::Convert(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    let result = File::open(&raw)
        .map_err(ImportError::from)
        .and_then(|f| import_stream(f, SourceFormat::Raw, dest, expected_sha256, progress));
    let _ = std::fs::remove_file(&raw);
    result
}

/// A scratch file beside `dest`, unique to this import (two imports of one
/// name never write into one file), ending in [`PARTIAL_SUFFIX`] so what a
/// crash leaves is found and removed at start.
pub fn partial_path(dest: &Path, what: &str) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let unique: u64 = rand::random();
    dest.with_file_name(format!("{name}.{unique:016x}.{what}{PARTIAL_SUFFIX}"))
}

/// Every scratch file an import writes ends in this.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Removes the scratch files imports cut off by a crash left in `dir`;
/// returns how many.
pub fn remove_partials(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn check_digest(expected: Option<&str>, actual: &str) -> Result<(), ImportError> {
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(actual) => {
            Err(ImportError::DigestMismatch { expected: e.to_ascii_lowercase(), actual: actual.to_string() })
        }
        _ => Ok(()),
    }
}

fn store(
    src: impl Read,
    format: SourceFormat,
    partial: &Path,
    probe: Probe,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ImportError> {
    let file = File::create(partial)?;
    let mut counted = Counted { inner: src, read: 0, progress };
    let (raw_bytes, sha256, bootable, file) = match format {
        SourceFormat::Raw => {
            let mut encoder = zstd::Encoder::new(BufWriter::with_capacity(BUF, file), STORE_LEVEL)?;
            let mut hashing = HashingWriter { inner: &mut encoder, hash: Sha256::new(), bytes: 0, probe };
            io::copy(&mut counted, &mut hashing)?;
            let (bytes, hash, bootable) = (hashing.bytes, hashing.hash.finalize(), hashing.probe.finish());
            (bytes, hex::encode(hash), bootable, encoder.finish()?.into_inner().map_err(|e| e.into_error())?)
        }
        SourceFormat::RawZstd => {
            // Keep the bytes as they came; decode a copy to hash and to
            // prove the stream is whole.
            let mut out = BufWriter::with_capacity(BUF, file);
            let tee = Tee { inner: &mut counted, copy: &mut out };
            let mut decoder = zstd::Decoder::new(tee).map_err(|e| ImportError::NotZstd(e.to_string()))?;
            let mut hashing = HashingWriter { inner: io::sink(), hash: Sha256::new(), bytes: 0, probe };
            io::copy(&mut decoder, &mut hashing).map_err(|e| ImportError::NotZstd(e.to_string()))?;
            // Anything after the last frame is copied too, then refused by
            // a decoder on the agent: refuse it here instead.
            let mut rest = decoder.finish();
            let mut trailing = [0u8; 1];
            if rest.read(&mut trailing)? != 0 {
                return Err(ImportError::NotZstd("data after the last zstd frame".into()));
            }
            let (bytes, hash, bootable) = (hashing.bytes, hashing.hash.finalize(), hashing.probe.finish());
            (bytes, hex::encode(hash), bootable, out.into_inner().map_err(|e| e.into_error())?)
        }
        SourceFormat::Qcow2 => return Err(ImportError::Qcow2NeedsPath),
    };
    if raw_bytes == 0 {
        return Err(ImportError::Empty);
    }
    file.sync_all()?;
    Ok(Imported { raw_bytes, sha256, stored_bytes: file.metadata()?.len(), bootable })
}

struct Counted<'a, R> {
    inner: R,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// Copies every byte read through it to `copy`.
struct Tee<'a, R, W> {
    inner: &'a mut R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Hashes, counts and probes (for the firmwares it boots) every raw byte
/// on its way to the store.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
    probe: Probe,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.probe.feed(&buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Vec<u8> {
        (0..3 << 20u32).map(|i| (i % 251) as u8).collect()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn stored_raw(path: &Path) -> Vec<u8> {
        zstd::decode_all(File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn raw_and_zstd_imports_store_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let raw = content();
        let a = dir.path().join("a.raw.zst");
        let imported = import_stream(&raw[..], SourceFormat::Raw, &a, Some(&sha(&raw)), &mut |_| {}).unwrap();
        assert_eq!((imported.raw_bytes, imported.sha256.clone()), (raw.len() as u64, sha(&raw)));
        assert_eq!(stored_raw(&a), raw);

        let compressed = zstd::encode_all(&raw[..], 1).unwrap();
        let b = dir.path().join("b.raw.zst");
        let mut seen = 0;
        let imported_b = import_stream(&compressed[..], SourceFormat::RawZstd, &b, None, &mut |n| seen = n).unwrap();
        assert_eq!(imported_b.sha256, imported.sha256);
        assert_eq!(seen, compressed.len() as u64, "progress counts the bytes received");
        assert_eq!(std::fs::read(&b).unwrap(), compressed, "zstd content is kept as it came");
    }

    #[test]
    fn a_wrong_digest_or_broken_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let raw = content();
        let dest = dir.path().join("x.raw.zst");
        let err = import_stream(&raw[..], SourceFormat::Raw, &dest, Some(&"0".repeat(64)), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::DigestMismatch { .. }), "{err}");
        let compressed = zstd::encode_all(&raw[..], 1).unwrap();
        let truncated = &compressed[..compressed.len() / 2];
        let err = import_stream(truncated, SourceFormat::RawZstd, &dest, None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::NotZstd(_)), "{err}");
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"junk");
        assert!(import_stream(&trailing[..], SourceFormat::RawZstd, &dest, None, &mut |_| {}).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no image and no partial file left");
    }

    #[test]
    fn a_qcow2_that_reads_another_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret-key");
        std::fs::write(&secret, vec![7u8; 1 << 20]).unwrap();
        let qcow = dir.path().join("evil.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&secret)
            .arg(&qcow)
            .status()
            .unwrap();
        assert!(status.success());
        let dest = dir.path().join("evil.raw.zst");
        let err = import_path(&qcow, SourceFormat::Qcow2, &dest, dir.path(), None, &mut |_| {}).unwrap_err();
        assert!(matches!(&err, ImportError::Qcow2ReadsOtherFiles(f) if f.contains("secret-key")), "{err}");
        assert!(!dest.exists(), "nothing stored");
    }

    #[test]
    fn qcow2_is_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        let raw = content();
        let raw_path = dir.path().join("in.raw");
        std::fs::write(&raw_path, &raw).unwrap();
        let qcow = dir.path().join("in.qcow2");
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(&qcow)
            .status()
            .expect("qemu-img (qemu-utils) is installed by scripts/prereqs.sh");
        assert!(status.success());
        let dest = dir.path().join("q.raw.zst");
        let imported = import_path(&qcow, SourceFormat::Qcow2, &dest, dir.path(), None, &mut |_| {}).unwrap();
        assert_eq!(imported.sha256, sha(&raw));
        assert_eq!(stored_raw(&dest), raw);
    }
}
