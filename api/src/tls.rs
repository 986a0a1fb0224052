//! TLS for the operator API (`api.tls`): the certificate (given files, or
//! a self-signed one generated at first start and reused), the rustls
//! server configuration, and the listener that feeds `axum::serve`.
//!
//! The listener is ours: a task accepts TCP connections and runs each TLS
//! handshake in its own task, bounded by [`HANDSHAKE_TIMEOUT`], so a client
//! that connects and says nothing never holds up the next one; finished
//! handshakes reach axum through a channel as an `axum::serve::Listener`.
//! Plain HTTP to a TLS port fails its handshake and is closed.
//!
//! It does not serve the boot face: iPXE and the ramdisk agent speak plain
//! HTTP on the provisioning network (see ARCHITECTURE.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ApiTls, Config};

/// A client must finish its TLS handshake within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    #[error("generating the API's self-signed certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the API's certificate and key do not go together")]
    Config(#[source] rustls::Error),
    #[error("binding the API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate chain with its key.
#[derive(Debug)]
pub struct ApiCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ApiCert {
    /// SHA-256 of the leaf certificate, as `AB:CD:...` (what browsers and
    /// `openssl x509 -fingerprint -sha256` show).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.chain.first().map_or(&[][..], |c| c.as_ref()))
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<ApiCert, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source });
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: cert.into(), what: "certificate", source: Some(e) })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.into(), what: "certificate", source: None });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.into(),
        what: "private key",
        source: Some(e),
    })?;
    Ok(ApiCert { chain, key: key_der })
}

/// The names a self-signed certificate is made for: localhost, the
/// loopback addresses, the listen address when it is a specific one, this
/// host's name, and `extra` (`api.tls_names`).
pub fn self_signed_names(listen: SocketAddr, hostname: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(hostname.map(str::trim).filter(|h| !h.is_empty()).map(str::to_string));
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Loads the self-signed certificate at `cert`/`key`, or generates one for
/// `names` when either file is missing. `true` when it was generated now.
pub fn self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(ApiCert, bool), TlsError> {
    if cert.is_file() && key.is_file() {
        return Ok((load(cert, key)?, false));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Slipway API (self-signed)");
    let key_pair = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let certificate = params.self_signed(&key_pair).map_err(TlsError::Generate)?;
    // The key first: a cert without its key is regenerated at next start.
    write_atomically(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert, certificate.pem().as_bytes(), 0o644)?;
    Ok((load(cert, key)?, true))
}

/// Writes `path.tmp` with `mode`, fsyncs it and renames it into place.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |source| TlsError::Write { path: path.into(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// rustls with the ring provider (as the rest of the workspace), TLS 1.2
/// and 1.3, HTTP/1.1 by ALPN.
pub fn server_config(cert: ApiCert) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS connections whose handshake finished, for `axum::serve`.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, incoming) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(async move {
            while !tx.is_closed() {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::warn!(error = %err, "accepting an API connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "API TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { incoming, local_addr, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept task ended, which it only does when this listener
            // is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// The operator API's listener, plain or TLS, as `api.tls` says.
pub enum ApiListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl ApiListener {
    /// Binds `api.listen`; with `self-signed`, generates the certificate on
    /// first start and prints its fingerprint that once.
    pub async fn bind(config: &Config, tls: &ApiTls) -> Result<ApiListener, TlsError> {
        let addr = config.api.listen;
        let cert = match tls {
            ApiTls::Off => None,
            ApiTls::Files { cert, key } => Some(load(cert, key)?),
            ApiTls::SelfSigned { cert, key, names } => {
                let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
                let names = self_signed_names(addr, hostname.as_deref(), names);
                let (loaded, generated) = self_signed(cert, key, &names)?;
                if generated {
                    eprintln!(
                        "First start with api.tls = \"self-signed\": generated {} for {}.\n\n    SHA-256 {}\n\n\
                         Clients pin it: slipway --ca {} ..., curl --cacert {} ... It will not be shown again.",
                        cert.display(),
                        names.join(", "),
                        loaded.fingerprint(),
                        cert.display(),
                        cert.display()
                    );
                }
                Some(loaded)
            }
        };
        let tcp = TcpListener::bind(addr).await.map_err(|source| TlsError::Bind { addr, source })?;
        Ok(match cert {
            None => ApiListener::Plain(tcp),
            Some(cert) => {
                tracing::info!(fingerprint = cert.fingerprint(), "API certificate");
                let listener =
                    TlsListener::new(tcp, server_config(cert)?).map_err(|source| TlsError::Bind { addr, source })?;
                ApiListener::Tls(listener)
            }
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            ApiListener::Plain(l) => l.local_addr(),
            ApiListener::Tls(l) => Ok(l.local_addr),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            ApiListener::Plain(_) => "http",
            ApiListener::Tls(_) => "https",
        }
    }

    pub async fn serve(self, router: axum::Router, limits: crate::http_serve::HttpLimits) -> std::io::Result<()> {
        match self {
            ApiListener::Plain(l) => crate::http_serve::serve(l, router, "operator", limits).await,
            ApiListener::Tls(l) => crate::http_serve::serve(l, router, "operator", limits).await,
        }
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
