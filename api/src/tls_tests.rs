use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const NAMES: &[&str] = &["localhost", "127.0.0.1"];

fn names() -> Vec<String> {
    NAMES.iter().map(|n| n.to_string()).collect()
}

#[test]
fn self_signed_is_generated_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("api-tls-cert.pem"), dir.path().join("api-tls-key.pem"));
    let (first, generated) = self_signed(&cert, &key, &names()).unwrap();
    assert!(generated);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    let fp = first.fingerprint();
    assert_eq!((fp.len(), fp.matches(':').count()), (95, 31), "{fp}");
    let (again, generated) = self_signed(&cert, &key, &names()).unwrap();
    assert!(!generated, "an existing certificate is reused");
    assert_eq!(again.fingerprint(), fp);
    std::fs::remove_file(&cert).unwrap();
    let (new, generated) = self_signed(&cert, &key, &names()).unwrap();
    assert!(generated && new.fingerprint() != fp, "a missing half means a new pair");
}

#[test]
fn self_signed_names_cover_loopback_listen_and_host() {
    let listen = "10.0.0.2:8443".parse().unwrap();
    assert_eq!(
        self_signed_names(listen, Some("slipway1\n"), &["api.rack7".into(), "localhost".into()]),
        ["localhost", "127.0.0.1", "::1", "10.0.0.2", "slipway1", "api.rack7"]
    );
    assert_eq!(self_signed_names("0.0.0.0:8443".parse().unwrap(), None, &[]), ["localhost", "127.0.0.1", "::1"]);
}

#[test]
fn bad_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    assert!(load(&cert, &key).unwrap_err().to_string().contains("c.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let err = load(&cert, &key).unwrap_err().to_string();
    assert!(err.contains("c.pem") && err.contains("certificate"), "{err}");
    self_signed(&dir.path().join("good.pem"), &key, &names()).unwrap();
    std::fs::copy(dir.path().join("good.pem"), &cert).unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n").unwrap();
    let err = load(&cert, &key).and_then(server_config).expect_err("an empty key is refused").to_string();
    assert!(err.contains("key") || err.contains("go together"), "{err}");
}

async fn get_over(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> std::io::Result<String> {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn serves_https_with_the_pinned_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, _) = self_signed(&cert_path, &key_path, &names()).unwrap();
    let ca = cert.chain[0].clone();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = ApiListener::Tls(TlsListener::new(tcp, server_config(cert).unwrap()).unwrap());
    assert_eq!(listener.scheme(), "https");
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(listener.serve(router, crate::config::Config::default().http.limits()));

    // A client that connects and stays silent does not block the others.
    let _silent = TcpStream::connect(addr).await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let answer = get_over(&mut tls).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");

    let mut plain = TcpStream::connect(addr).await.unwrap();
    let answer = get_over(&mut plain).await.unwrap_or_default();
    assert!(!answer.contains("200 OK"), "plain HTTP must not be served: {answer:?}");
    server.abort();
}
