//! The TFTP server: the only TFTP code that touches sockets or files.
//!
//! Read-only. Each transfer gets its own socket bound to the address the
//! request came to (the server socket is bound to one address, so replies
//! always leave from it), connected to the client's port, and its own task
//! driving a [`Session`]. A client that vanishes costs one task until its
//! retries run out.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

pub struct TftpServer {
    root: PathBuf,
    limits: SessionOptions,
    pub stats: TftpStats,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Access(&'static str),
}

impl TftpServer {
    /// `root` is canonicalized once; every request must resolve inside it.
    pub fn new(root: &Path, limits: SessionOptions) -> std::io::Result<Arc<TftpServer>> {
        Ok(Arc::new(TftpServer { root: root.canonicalize()?, limits, stats: TftpStats::default() }))
    }

    /// Maps a requested name to a file inside the root: no `..`, leading
    /// slashes are taken as relative to the root (PXE ROMs send both forms),
    /// and symlinks may not lead outside it.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Refusal> {
        let relative = Path::new(name.trim_start_matches('/'));
        if name.contains('\0') || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Refusal::Access("path leaves the TFTP root"));
        }
        let path = self.root.join(relative).canonicalize().map_err(|_| Refusal::NotFound)?;
        if !path.starts_with(&self.root) {
            return Err(Refusal::Access("path leaves the TFTP root"));
        }
        if !path.is_file() {
            return Err(Refusal::NotFound);
        }
        Ok(path)
    }

    pub async fn run(self: Arc<Self>, socket: UdpSocket) -> std::io::Result<()> {
        let local = socket.local_addr()?;
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await?;
            match Packet::parse(&buf[..len]) {
                Ok(Packet::Read(req)) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    let server = self.clone();
                    tokio::spawn(async move { server.transfer(local, peer, req).await });
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

    async fn refuse(&self, socket: &UdpSocket, peer: SocketAddr, file: &str, code: u16, why: &str) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("slipway_tftp_refused_total").increment(1);
        info!(%peer, file, why, "tftp request refused");
        let _ = socket.send_to(&packet::error(code, why), peer).await;
    }

    async fn transfer(self: Arc<Self>, local: SocketAddr, peer: SocketAddr, req: ReadRequest) {
        let socket = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
            Ok(s) => s,
            Err(err) => return warn!(%peer, %err, "cannot open a transfer socket"),
        };
        if socket.connect(peer).await.is_err() {
            return;
        }
        let data = match self.load(&req.filename).await {
            Ok(data) => data,
            Err((code, why)) => return self.refuse(&socket, peer, &req.filename, code, why).await,
        };
        self.stats.active.fetch_add(1, Ordering::Relaxed);
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
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
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

    async fn load(&self, name: &str) -> Result<Arc<[u8]>, (u16, &'static str)> {
        let path = self.resolve(name).map_err(|r| match r {
            Refusal::NotFound => (ERR_NOT_FOUND, "file not found"),
            Refusal::Access(why) => (ERR_ACCESS, why),
        })?;
        let meta = tokio::fs::metadata(&path).await.map_err(|_| (ERR_NOT_FOUND, "file not found"))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err((ERR_NOT_DEFINED, "file too large for TFTP; use HTTP"));
        }
        tokio::fs::read(&path).await.map(Arc::from).map_err(|_| (ERR_NOT_FOUND, "file not found"))
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
}
