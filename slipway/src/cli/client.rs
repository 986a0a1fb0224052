//! The API client: blocking `ureq` with a bearer token, rustls for
//! `https://` (the system's web PKI roots, a pinned `--ca`, or
//! `--insecure`), and the mapping of failures to [`CliError`]: RFC 9457
//! problem documents keep their title, detail and field; transport
//! failures name the URL.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::settings::Settings;
use super::CliError;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Client, CliError> {
        let token = settings.token.clone().ok_or_else(|| {
            CliError::Usage(
                "no API token: give --token, set SLIPWAY_API_TOKEN, or put token = \"...\" in ~/.config/slipway/cli.toml"
                    .into(),
            )
        })?;
        if !settings.url.starts_with("http://") && !settings.url.starts_with("https://") {
            return Err(CliError::Usage(format!("--api {}: an http:// or https:// URL", settings.url)));
        }
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(300))
            .user_agent(concat!("slipway-cli/", env!("CARGO_PKG_VERSION")));
        match (&settings.ca, settings.insecure) {
            (Some(_), true) => return Err(CliError::Usage("give --ca or --insecure, not both".into())),
            (Some(ca), false) => builder = builder.tls_config(pinned(ca)?),
            (None, true) => builder = builder.tls_config(insecure()),
            (None, false) => {}
        }
        Ok(Client { agent: builder.build(), base: settings.url.clone(), token })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "application/json, application/problem+json")
    }

    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.finish(self.request("GET", path).call())
    }

    pub fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, CliError> {
        let mut req = self.request("GET", path);
        for (k, v) in query {
            req = req.query(k, v);
        }
        self.finish(req.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.finish(self.request("POST", path).send_json(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.finish(self.request("DELETE", path).call())
    }

    /// Streams `body` (`len` bytes) as the request body.
    pub fn put_stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        len: u64,
        body: impl Read,
    ) -> Result<Value, CliError> {
        let mut req = self.request("PUT", path).set("Content-Length", &len.to_string());
        for (k, v) in headers {
            req = req.set(k, v);
        }
        self.finish(req.send(body))
    }

    /// The response's JSON (`null` for an empty body, as a 204 has).
    fn finish(&self, result: Result<ureq::Response, ureq::Error>) -> Result<Value, CliError> {
        match result {
            Ok(response) => {
                let mut text = String::new();
                response
                    .into_reader()
                    .read_to_string(&mut text)
                    .map_err(|e| CliError::Connect { url: self.base.clone(), message: e.to_string() })?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| CliError::Problem {
                    status: 200,
                    title: "Unreadable answer".into(),
                    detail: format!("the API's answer is not JSON ({e})"),
                    field: None,
                })
            }
            Err(ureq::Error::Status(status, response)) => Err(problem(status, response)),
            Err(ureq::Error::Transport(t)) => Err(CliError::Connect { url: self.base.clone(), message: transport(&t) }),
        }
    }
}

/// A problem document, or the status and the start of whatever came.
fn problem(status: u16, response: ureq::Response) -> CliError {
    let mut body = String::new();
    let _ = response.into_reader().take(64 * 1024).read_to_string(&mut body);
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let field = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_string);
    CliError::Problem {
        status,
        title: field("title").unwrap_or_else(|| format!("HTTP {status}")),
        detail: field("detail").unwrap_or_else(|| body.trim().chars().take(200).collect()),
        field: field("field"),
    }
}

/// A transport failure in words, with a hint for certificate trouble.
fn transport(t: &ureq::Transport) -> String {
    let mut text = t.kind().to_string();
    if let Some(message) = t.message() {
        text = format!("{text}: {message}");
    }
    let mut source = std::error::Error::source(t);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if text.to_lowercase().contains("certificate") {
        text.push_str(" (trust the API's certificate with --ca FILE, or skip the check with --insecure)");
    }
    text
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusts only the certificates in `ca` (a CA, or the server's own
/// self-signed certificate).
fn pinned(ca: &Path) -> Result<Arc<rustls::ClientConfig>, CliError> {
    let file_err = |source| CliError::File { what: "reading the CA", path: ca.into(), source };
    let pem = std::fs::read(ca).map_err(file_err)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CliError::Usage(format!("--ca {}: {e}", ca.display())))?;
        roots.add(cert).map_err(|e| CliError::Usage(format!("--ca {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(CliError::Usage(format!("--ca {}: no PEM certificate in it", ca.display())));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate (the connection is still encrypted, and its
/// handshake signatures checked, but anyone in the path can pose as the
/// API).
fn insecure() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Percent-encodes one path segment (ids, MACs, names).
pub fn seg(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::seg("52:54:00:5e:00:01"), "52:54:00:5e:00:01");
        assert_eq!(super::seg("a b/../c"), "a%20b%2F..%2Fc");
    }
}
