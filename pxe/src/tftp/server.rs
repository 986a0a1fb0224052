//! The TFTP server: the only TFTP code that touches sockets or files.
//!
//! Read-only. Names are looked up in the generated files first (a
//! backend's per-machine scripts), then in the mounted directories in
//! order, each under its own prefix. A file's bytes are read once and
//! shared by every transfer of it until it changes on disk, so a hundred
//! machines fetching the same kernel hold one copy. Each transfer gets its own socket bound to the address the
//! request came to (the server socket is bound to one address, so replies
//! always leave from it), connected to the client's port, and its own task
//! driving a [`Session`]. A client that vanishes costs one task until its
//! retries run out.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::packet::{self, Packet, ReadRequest, ERR_ACCESS, ERR_NOT_DEFINED, ERR_NOT_FOUND};
use super::session::{Output, Session, SessionOptions};

/// Files larger than this are refused: TFTP is for boot loaders; kernels
/// and images go over HTTP.
const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Default)]
pub struct TftpStats {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub refused: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Transfers in progress; back to zero once every client is done or gone.
    pub active: AtomicU64,
    /// Requests refused because too many transfers were running.
    pub busy: AtomicU64,
}

pub struct TftpServer {
    /// `(prefix, directory)`: `slipway/x` is `x` in the directory mounted
    /// at `slipway`; the prefix `""` is the root.
    mounts: Vec<(String, PathBuf)>,
    generated: Option<Arc<dyn GeneratedFiles>>,
    cache: Mutex<HashMap<PathBuf, CachedFile>>,
    /// Transfers running per client address (entries leave at zero).
    per_client: Mutex<HashMap<IpAddr, usize>>,
    limits: SessionOptions,
    pub stats: TftpStats,
}

/// A transfer's place under the caps, given back when it ends however it
/// ends.
struct Slot {
    server: Arc<TftpServer>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.stats.active.fetch_sub(1, Ordering::Relaxed);
        let mut per_client = self.server.per_client.lock().expect("per-client lock");
        if let Some(n) = per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

struct CachedFile {
    modified: SystemTime,
    bytes: Arc<[u8]>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Access(&'static str),
    /// The generator could not answer now (its database is away).
    Unavailable(&'static str),
}

pub type Generated<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, Refusal>> + Send + 'a>>;

/// Files made up per request by whoever knows the machines.
pub trait GeneratedFiles: Send + Sync + 'static {
    /// The content of `name` for the client at `peer`, or `None` when
    /// `name` is not one of this generator's (then the mounts are tried).
    fn generate<'a>(&'a self, name: &'a str, peer: SocketAddr) -> Option<Generated<'a>>;
}

impl TftpServer {
    /// Serves `root` only. It is canonicalized once; every request must
    /// resolve inside it.
    pub fn new(root: &Path, limits: SessionOptions) -> std::io::Result<Arc<TftpServer>> {
        TftpServer::with_mounts(&[("", root)], None, limits)
    }

    /// Serves each directory under its prefix (one path component, or
    /// `""` for the root), and the generated files before any of them.
    pub fn with_mounts(
        mounts: &[(&str, &Path)],
        generated: Option<Arc<dyn GeneratedFiles>>,
        limits: SessionOptions,
    ) -> std::io::Result<Arc<TftpServer>> {
        let mounts = mounts
            .iter()
            .map(|(prefix, dir)| Ok((prefix.to_string(), dir.canonicalize()?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Arc::new(TftpServer {
            mounts,
            generated,
            cache: Mutex::default(),
            per_client: Mutex::default(),
            limits,
            stats: TftpStats::default(),
        }))
    }

    /// Maps a requested name to a file inside a mount: no `..`, leading
    /// slashes are taken as relative to the root (PXE ROMs send both forms),
    /// and symlinks may not lead outside the mount.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Refusal> {
        let relative = Path::new(name.trim_start_matches('/'));
        if name.contains('\0') || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Refusal::Access("path leaves the TFTP root"));
        }
        for (prefix, dir) in &self.mounts {
            let inside = if prefix.is_empty() { Some(relative) } else { relative.strip_prefix(prefix).ok() };
            let Some(inside) = inside.filter(|p| !p.as_os_str().is_empty()) else { continue };
            let Ok(path) = dir.join(inside).canonicalize() else { continue };
            if !path.starts_with(dir) {
                return Err(Refusal::Access("path leaves the TFTP root"));
            }
            if path.is_file() {
                return Ok(path);
            }
        }
        Err(Refusal::NotFound)
    }

    pub async fn run(self: Arc<Self>, socket: UdpSocket) -> std::io::Result<()> {
        let local = socket.local_addr()?;
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await?;
            match Packet::parse(&buf[..len]) {
                Ok(Packet::Read(req)) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    match self.clone().take_slot(peer.ip()) {
                        Some(slot) => {
                            let server = self.clone();
                            tokio::spawn(async move { server.transfer(local, peer, req, slot).await });
                        }
                        None => {
                            self.stats.busy.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("slipway_tftp_busy_total").increment(1);
                            self.refuse(&socket, peer, &req.filename, ERR_NOT_DEFINED, "too many transfers; retry")
                                .await;
                        }
                    }
                }
                Ok(Packet::Write { filename }) => {
                    self.refuse(&socket, peer, &filename, ERR_ACCESS, "read-only server").await;
                }
                Ok(_) => {} // stray ACK/ERROR to the listening port: not a session
                Err(err) => {
                    self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("slipway_tftp_dropped_total", "reason" => err.label()).increment(1);
                    debug!(%peer, %err, "dropped malformed TFTP datagram");
                }
            }
        }
    }

    /// A place for one more transfer from `client`, or `None` when the
    /// server or that client is at its cap.
    fn take_slot(self: Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut per_client = self.per_client.lock().expect("per-client lock");
        let mine = per_client.get(&client).copied().unwrap_or(0);
        let active = self.stats.active.load(Ordering::Relaxed) as usize;
        if active >= self.limits.max_sessions || mine >= self.limits.max_sessions_per_client {
            return None;
        }
        per_client.insert(client, mine + 1);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        drop(per_client);
        Some(Slot { server: self, client })
    }

    async fn refuse(&self, socket: &UdpSocket, peer: SocketAddr, file: &str, code: u16, why: &str) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("slipway_tftp_refused_total").increment(1);
        info!(%peer, file, why, "tftp request refused");
        let _ = socket.send_to(&packet::error(code, why), peer).await;
    }

    async fn transfer(self: Arc<Self>, local: SocketAddr, peer: SocketAddr, req: ReadRequest, _slot: Slot) {
        let socket = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
            Ok(s) => s,
            Err(err) => return warn!(%peer, %err, "cannot open a transfer socket"),
        };
        if socket.connect(peer).await.is_err() {
            return;
        }
        let data = match self.load(&req.filename, peer).await {
            Ok(data) => data,
            Err((code, why)) => return self.refuse(&socket, peer, &req.filename, code, why).await,
        };
        metrics::counter!("slipway_tftp_transfers_started_total").increment(1);
        let started = std::time::Instant::now();
        let size = data.len();
        let (mut session, mut outputs) = Session::start(&req, data, &self.limits);
        let mut buf = vec![0u8; 65536];
        let outcome = loop {
            let mut finished = None;
            for out in outputs.drain(..) {
                match out {
                    Output::Send(bytes) => {
                        metrics::counter!("slipway_tftp_sent_bytes_total").increment(bytes.len() as u64);
                        let _ = socket.send(&bytes).await;
                    }
                    Output::Done { completed } => finished = Some(Ok(completed)),
                    Output::Failed(why) => finished = Some(Err(why)),
                }
            }
            if let Some(result) = finished {
                break result;
            }
            outputs = match tokio::time::timeout(session.timeout(), socket.recv(&mut buf)).await {
                Err(_) => session.on_timeout(),
                Ok(Err(_)) => session.on_timeout(), // ICMP unreachable surfaces here
                Ok(Ok(len)) => match Packet::parse(&buf[..len]) {
                    Ok(pkt) => session.on_packet(&pkt),
                    Err(_) => continue,
                },
            };
        };
        let ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(completed) => {
                if completed {
                    self.stats.completed.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!("slipway_tftp_transfers_total", "outcome" => if completed { "completed" } else { "client_ended" }).increment(1);
                info!(%peer, file = req.filename, size, blksize = session.blksize(), ms, completed, "tftp transfer ended");
            }
            Err(why) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("slipway_tftp_transfers_total", "outcome" => "failed").increment(1);
                info!(%peer, file = req.filename, why, "tftp transfer failed");
            }
        }
    }

    async fn load(&self, name: &str, peer: SocketAddr) -> Result<Arc<[u8]>, (u16, &'static str)> {
        let refused = |r| match r {
            Refusal::NotFound => (ERR_NOT_FOUND, "file not found"),
            Refusal::Access(why) => (ERR_ACCESS, why),
            Refusal::Unavailable(why) => (ERR_NOT_DEFINED, why),
        };
        if let Some(generating) = self.generated.as_ref().and_then(|g| g.generate(name, peer)) {
            return generating.await.map(Arc::from).map_err(refused);
        }
        let path = self.resolve(name).map_err(refused)?;
        let not_found = |_| (ERR_NOT_FOUND, "file not found");
        let meta = tokio::fs::metadata(&path).await.map_err(not_found)?;
        if meta.len() > MAX_FILE_BYTES {
            return Err((ERR_NOT_DEFINED, "file too large for TFTP; use HTTP"));
        }
        let modified = meta.modified().map_err(not_found)?;
        let cached = |cache: &HashMap<PathBuf, CachedFile>| {
            cache
                .get(&path)
                .filter(|f| f.modified == modified && f.bytes.len() as u64 == meta.len())
                .map(|f| f.bytes.clone())
        };
        if let Some(bytes) = cached(&self.cache.lock().expect("cache lock")) {
            return Ok(bytes);
        }
        let bytes: Arc<[u8]> = tokio::fs::read(&path).await.map(Arc::from).map_err(not_found)?;
        // Bounded by the mounts' contents, which the operator chose.
        self.cache.lock().expect("cache lock").insert(path, CachedFile { modified, bytes: bytes.clone() });
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_with_files() -> (tempfile::TempDir, Arc<TftpServer>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"ipxe").unwrap();
        std::fs::create_dir(root.join("efi")).unwrap();
        std::fs::write(root.join("efi/snponly.efi"), b"efi").unwrap();
        std::fs::write(dir.path().join("secret"), b"nope").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        let server = TftpServer::new(&root, SessionOptions::default()).unwrap();
        (dir, server)
    }

    #[test]
    fn resolves_inside_the_root_only() {
        let (_dir, s) = server_with_files();
        assert!(s.resolve("undionly.kpxe").is_ok());
        assert!(s.resolve("/efi/snponly.efi").is_ok(), "leading slash is relative to the root");
        assert_eq!(s.resolve("../secret"), Err(Refusal::Access("path leaves the TFTP root")));
        assert_eq!(s.resolve("efi/../../secret"), Err(Refusal::Access("path leaves the TFTP root")));
        assert_eq!(s.resolve("escape"), Err(Refusal::Access("path leaves the TFTP root")), "symlink out of the root");
        assert_eq!(s.resolve("efi"), Err(Refusal::NotFound), "directories are not served");
        assert_eq!(s.resolve("missing"), Err(Refusal::NotFound));
    }

    struct Scripts;
    impl GeneratedFiles for Scripts {
        fn generate<'a>(&'a self, name: &'a str, _peer: SocketAddr) -> Option<Generated<'a>> {
            let name = name.strip_prefix("gen/")?.to_string();
            Some(Box::pin(async move {
                if name == "down" {
                    Err(Refusal::Unavailable("database unavailable"))
                } else {
                    Ok(name.into_bytes())
                }
            }))
        }
    }

    #[tokio::test]
    async fn mounts_and_generated_files_each_answer_their_own_names() {
        let (dir, _) = server_with_files();
        let signed = dir.path().join("signed");
        std::fs::create_dir(&signed).unwrap();
        std::fs::write(signed.join("shimx64.efi"), b"shim").unwrap();
        let root = dir.path().join("root");
        let mounts: &[(&str, &Path)] = &[("", &root), ("slipway", &signed), ("slipway", &root.join("efi"))];
        let s = TftpServer::with_mounts(mounts, Some(Arc::new(Scripts)), SessionOptions::default()).unwrap();
        let peer = SocketAddr::from(([10, 77, 0, 100], 1024));
        let load = |name: &'static str| {
            let s = s.clone();
            async move { s.load(name, peer).await.map(|b| String::from_utf8_lossy(&b).into_owned()) }
        };
        assert_eq!(load("undionly.kpxe").await.unwrap(), "ipxe");
        assert_eq!(load("slipway/shimx64.efi").await.unwrap(), "shim");
        assert_eq!(load("/slipway/snponly.efi").await.unwrap(), "efi", "the second mount under one prefix");
        assert_eq!(load("gen/52:54:00:00:00:01.cfg").await.unwrap(), "52:54:00:00:00:01.cfg");
        assert_eq!(load("gen/down").await, Err((ERR_NOT_DEFINED, "database unavailable")));
        assert_eq!(load("slipway/../escape").await, Err((ERR_ACCESS, "path leaves the TFTP root")));
        assert_eq!(load("slipway").await, Err((ERR_NOT_FOUND, "file not found")), "a mount is not a file");

        // One copy of a file for every transfer, re-read once it changes.
        let (first, again) =
            (s.load("undionly.kpxe", peer).await.unwrap(), s.load("undionly.kpxe", peer).await.unwrap());
        assert!(Arc::ptr_eq(&first, &again));
        std::fs::write(root.join("undionly.kpxe"), b"ipxe, rebuilt").unwrap();
        let file = std::fs::File::options().write(true).open(root.join("undionly.kpxe")).unwrap();
        file.set_modified(SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(load("undionly.kpxe").await.unwrap(), "ipxe, rebuilt");
    }
}
