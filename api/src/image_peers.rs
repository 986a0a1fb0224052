//! Image content another appliance on the same database holds: fetched
//! from that appliance's boot face the first time a machine asks this one
//! for it, checked against the image's SHA-256 while it is stored, and
//! kept under that digest (`images_dir/peer/HEX.raw.zst`), so a name
//! reused for other content never serves the old bytes. One fetch per
//! digest at a time; whoever asks meanwhile waits for it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use images::catalog::{self, SourceFormat};

/// How long a peer may take to start answering, and to send more bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The fetches under way, by digest.
#[derive(Default)]
pub struct Fetches {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where the copy of the content with raw SHA-256 `sha256` lives.
pub fn copy_path(images_dir: &Path, sha256: &str) -> Option<PathBuf> {
    wire::is_sha256_hex(sha256).then(|| images_dir.join("peer").join(format!("{sha256}.raw.zst")))
}

impl Fetches {
    /// A local copy of image `name`'s content (raw SHA-256 `sha256`),
    /// fetched from the appliance whose boot face is `held_at` if this one
    /// has none yet.
    pub async fn local_copy(
        &self,
        images_dir: &Path,
        name: &str,
        sha256: &str,
        held_at: &str,
    ) -> Result<PathBuf, String> {
        let path = copy_path(images_dir, sha256).ok_or_else(|| format!("image {name}: a malformed digest"))?;
        if path.is_file() {
            return Ok(path);
        }
        let lock = self.running.lock().expect("fetches lock").entry(sha256.to_string()).or_default().clone();
        let _only_one = lock.lock().await;
        if path.is_file() {
            return Ok(path);
        }
        let url = format!("{held_at}/boot/images/{name}.raw.zst");
        let (dest, digest) = (path.clone(), sha256.to_string());
        let started = std::time::Instant::now();
        let fetched = tokio::task::spawn_blocking(move || fetch(&url, &dest, &digest)).await;
        self.running.lock().expect("fetches lock").remove(sha256);
        let outcome = match fetched {
            Ok(result) => result,
            Err(join) => Err(format!("fetch task failed: {join}")),
        };
        let label = if outcome.is_ok() { "fetched" } else { "failed" };
        metrics::counter!("slipway_image_peer_fetches_total", "outcome" => label).increment(1);
        match &outcome {
            Ok(bytes) => tracing::info!(
                image = name,
                held_at,
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "image content fetched from the appliance that holds it"
            ),
            Err(error) => tracing::warn!(image = name, held_at, error, "fetching image content from its holder failed"),
        }
        outcome.map(|_| path)
    }
}

/// Streams `url` into `dest` through the catalog's import, which keeps it
/// only if the raw content hashes to `sha256`; returns the stored bytes.
fn fetch(url: &str, dest: &Path, sha256: &str) -> Result<u64, String> {
    std::fs::create_dir_all(dest.parent().expect("a peer directory")).map_err(|e| e.to_string())?;
    let agent = ureq::AgentBuilder::new().timeout_connect(CONNECT_TIMEOUT).timeout_read(READ_TIMEOUT).build();
    let response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let imported =
        catalog::import_stream(response.into_reader(), SourceFormat::RawZstd, dest, Some(sha256), &mut |_| {})
            .map_err(|e| format!("{url}: {e}"))?;
    Ok(imported.stored_bytes)
}

/// Removes copies no available image needs any more (at start), and the
/// scratch files of fetches a stop cut off; returns how many went.
pub fn prune(images_dir: &Path, needed: &HashSet<String>) -> std::io::Result<usize> {
    let dir = images_dir.join("peer");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let keep = name.strip_suffix(".raw.zst").is_some_and(|digest| needed.contains(digest));
        if !keep {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
