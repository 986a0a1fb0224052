//! Transport and authentication: the only part of `redfish` that touches
//! the network.
//!
//! A [`RedfishClient`] holds one `reqwest` client (TLS per [`TlsTrust`],
//! a per-request timeout, at most 5 redirects and never to another host,
//! so a session token is not handed to a third party) and the login state:
//! a Redfish session (`X-Auth-Token`, its `Location` kept for
//! [`RedfishClient::logout`]) or HTTP basic when the service has no
//! SessionService or refuses to create sessions. A 401 triggers one fresh
//! login and one retry; a second 401 is [`OobError::Auth`]. Errors name the
//! BMC (`host:port`) and the resource; the password never appears in an
//! error, a log line or a `Debug` output.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, ETAG, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::quirks::Vendor;
use crate::oob::{Credentials, OobError, TlsTrust};

/// Most pages we follow in one collection (`Members@odata.nextLink`).
const MAX_PAGES: usize = 64;

#[derive(Clone, PartialEq, Eq)]
enum Auth {
    /// Not logged in yet.
    None,
    Session {
        token: String,
        location: Option<String>,
    },
    Basic,
}

/// A client for one BMC's Redfish service.
pub struct RedfishClient {
    http: reqwest::Client,
    base: Url,
    peer: String,
    creds: Credentials,
    timeout: Duration,
    /// Held across a login so concurrent callers log in once.
    auth: tokio::sync::Mutex<Auth>,
    root: Mutex<Option<Arc<Value>>>,
}

impl std::fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishClient").field("peer", &self.peer).field("creds", &self.creds).finish()
    }
}

/// A decoded answer: status, headers and the JSON body (`Null` if empty).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The resource's ETag: the header, else `@odata.etag` in the body.
    pub fn etag(&self) -> Option<String> {
        self.headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.body.get("@odata.etag").and_then(Value::as_str).map(str::to_owned))
    }

    pub fn location(&self) -> Option<String> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

impl RedfishClient {
    /// A client for the service at `base_url` (`https://10.0.0.5`,
    /// `http://127.0.0.1:8000`). Nothing is sent until the first call.
    pub fn new(base_url: &str, creds: Credentials, tls: TlsTrust, timeout: Duration) -> Result<Self, OobError> {
        let bad = |detail: String| OobError::Protocol { peer: base_url.to_owned(), detail };
        let base = Url::parse(base_url.trim_end_matches('/')).map_err(|e| bad(format!("bad BMC URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("BMC URL must be http:// or https:// with a host".into()));
        }
        let peer = match base.port() {
            Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let same_host = attempt.previous().first().map(|u| (u.host_str(), u.port_or_known_default()))
                == Some((attempt.url().host_str(), attempt.url().port_or_known_default()));
            if attempt.previous().len() > 5 {
                attempt.error("more than 5 redirects")
            } else if !same_host {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirects)
            .user_agent(concat!("slipway-inventory/", env!("CARGO_PKG_VERSION")));
        match &tls {
            TlsTrust::Verify => {}
            TlsTrust::Insecure => builder = builder.danger_accept_invalid_certs(true),
            TlsTrust::Ca(pem) => {
                let ca = reqwest::Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| bad(format!("CA certificate is not valid PEM: {e}")))?;
                builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
            }
        }
        let http = builder.build().map_err(|e| bad(format!("cannot build HTTP client: {}", chain(&e))))?;
        Ok(RedfishClient {
            http,
            base,
            peer,
            creds,
            timeout,
            auth: tokio::sync::Mutex::new(Auth::None),
            root: Mutex::new(None),
        })
    }

    /// The BMC as errors name it (`host:port`).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Closes the Redfish session, if one was opened. Harmless otherwise.
    pub async fn logout(&self) -> Result<(), OobError> {
        let mut auth = self.auth.lock().await;
        let old = std::mem::replace(&mut *auth, Auth::None);
        if let Auth::Session { token, location: Some(location) } = old {
            let req = self.http.delete(self.url(&location)).header("X-Auth-Token", token);
            let resp = req.send().await.map_err(|e| self.transport_error(e, &location))?;
            if !resp.status().is_success() && resp.status() != StatusCode::NOT_FOUND {
                return Err(self.http_error("DELETE", &location, resp.status(), &Value::Null));
            }
        }
        Ok(())
    }

    /// The vendor, from the service root (fetched once).
    pub async fn vendor(&self) -> Result<Vendor, OobError> {
        Ok(Vendor::detect(&*self.service_root().await?, None))
    }

    /// The service root, fetched once without credentials (the spec makes
    /// it public; a BMC that wants basic auth for it gets basic auth).
    pub(crate) async fn service_root(&self) -> Result<Arc<Value>, OobError> {
        if let Some(root) = self.root.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(root);
        }
        let path = "/redfish/v1/";
        let resp = self.send_raw(Method::GET, path, None, None, &Auth::None).await?;
        let resp = if resp.status() == StatusCode::UNAUTHORIZED {
            self.send_raw(Method::GET, path, None, None, &Auth::Basic).await?
        } else {
            resp
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(OobError::Auth { peer: self.peer.clone() });
        }
        let answer = self.decode(Method::GET, path, resp).await?;
        let root = Arc::new(answer.body);
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root.clone());
        Ok(root)
    }

    /// GET a resource; any non-2xx is an error naming it.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, OobError> {
        Ok(self.get_answer(path).await?.body)
    }

    pub(crate) async fn get_answer(&self, path: &str) -> Result<Answer, OobError> {
        let answer = self.request(Method::GET, path, None, None).await?;
        if answer.body.is_null() {
            return Err(self.malformed(path, "empty body"));
        }
        Ok(answer)
    }

    /// Sends a request with the current login; a 401 causes one re-login
    /// and one retry. Non-2xx answers become [`OobError::Http`].
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, OobError> {
        let mut auth = self.current_auth().await?;
        let mut retried = false;
        loop {
            let resp = self.send_raw(method.clone(), path, body, if_match, &auth).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if retried {
                    return Err(OobError::Auth { peer: self.peer.clone() });
                }
                retried = true;
                tracing::info!(bmc = %self.peer, resource = path, "401: logging in again");
                auth = self.relogin(&auth).await?;
                continue;
            }
            return self.decode(method, path, resp).await;
        }
    }

    /// Every member of a collection, following `Members@odata.nextLink`.
    pub(crate) async fn members(&self, path: &str) -> Result<Vec<String>, OobError> {
        let mut out = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(page) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(self.malformed(path, &format!("more than {MAX_PAGES} pages of members")));
            }
            let doc = self.get(&page).await?;
            let members = doc.get("Members").and_then(Value::as_array);
            if members.is_none() && !doc.get("Members").is_some_and(Value::is_null) {
                return Err(self.malformed(&page, "no Members array"));
            }
            out.extend(members.into_iter().flatten().filter_map(|m| super::map::odata_id(m).map(str::to_owned)));
            next = doc.get("Members@odata.nextLink").and_then(Value::as_str).map(str::to_owned);
        }
        Ok(out)
    }

    pub(crate) fn malformed(&self, what: &str, detail: &str) -> OobError {
        OobError::Malformed { peer: self.peer.clone(), what: what.to_owned(), detail: detail.to_owned() }
    }

    async fn current_auth(&self) -> Result<Auth, OobError> {
        let mut auth = self.auth.lock().await;
        if *auth == Auth::None {
            *auth = self.login().await?;
        }
        Ok(auth.clone())
    }

    /// Logs in again unless another caller already replaced `failed`.
    async fn relogin(&self, failed: &Auth) -> Result<Auth, OobError> {
        let mut auth = self.auth.lock().await;
        if *auth == *failed || *auth == Auth::None {
            *auth = self.login().await?;
        }
        Ok(auth.clone())
    }

    /// Creates a session, or settles for basic auth when the service has no
    /// SessionService or will not create one (session limit reached, ...).
    async fn login(&self) -> Result<Auth, OobError> {
        let root = self.service_root().await?;
        let sessions = super::map::link(&root, &["Links", "Sessions"])
            .map(str::to_owned)
            .or_else(|| root.get("SessionService").map(|_| "/redfish/v1/SessionService/Sessions".to_owned()));
        let Some(sessions) = sessions else {
            tracing::debug!(bmc = %self.peer, "no SessionService: using basic auth");
            return Ok(Auth::Basic);
        };
        let body = json!({ "UserName": self.creds.username, "Password": self.creds.password });
        let resp = self.send_raw(Method::POST, &sessions, Some(&body), None, &Auth::None).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(OobError::Auth { peer: self.peer.clone() });
        }
        if !status.is_success() {
            tracing::warn!(bmc = %self.peer, %status, "session create refused: using basic auth");
            return Ok(Auth::Basic);
        }
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let location = header("Location");
        match header("X-Auth-Token") {
            Some(token) => {
                tracing::debug!(bmc = %self.peer, session = ?location, "session created");
                Ok(Auth::Session { token, location })
            }
            None => {
                tracing::warn!(bmc = %self.peer, "session created without X-Auth-Token: using basic auth");
                Ok(Auth::Basic)
            }
        }
    }

    /// The URL of a resource path. An absolute URL (iLO's session
    /// `Location`) is reduced to its path on this BMC, so a token is never
    /// sent to a host the operator did not enrol.
    fn url(&self, path: &str) -> String {
        let absolute;
        let path = match Url::parse(path) {
            Ok(u) if u.has_host() => {
                absolute = match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_owned(),
                };
                absolute.as_str()
            }
            _ => path,
        };
        let mut url = self.base.clone();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        url.set_path(p);
        url.set_query((!q.is_empty()).then_some(q));
        url.to_string()
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        auth: &Auth,
    ) -> Result<reqwest::Response, OobError> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        req = match auth {
            Auth::Session { token, .. } => req.header("X-Auth-Token", token),
            Auth::Basic => req.basic_auth(&self.creds.username, Some(&self.creds.password)),
            Auth::None => req,
        };
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        tracing::trace!(bmc = %self.peer, %method, resource = path, "redfish request");
        req.send().await.map_err(|e| self.transport_error(e, path))
    }

    async fn decode(&self, method: Method, path: &str, resp: reqwest::Response) -> Result<Answer, OobError> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e, path))?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => v,
                Err(_) if !status.is_success() => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => return Err(self.malformed(path, &format!("not JSON: {e}"))),
            }
        };
        if !status.is_success() {
            return Err(self.http_error(method.as_str(), path, status, &body));
        }
        Ok(Answer { status, headers, body })
    }

    fn http_error(&self, method: &str, path: &str, status: StatusCode, body: &Value) -> OobError {
        let message = body
            .pointer("/error/@Message.ExtendedInfo/0/Message")
            .or_else(|| body.pointer("/error/message"))
            .and_then(Value::as_str)
            .or_else(|| body.as_str())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
        let detail: String = message.chars().take(200).collect();
        OobError::Http { peer: self.peer.clone(), what: format!("{method} {path}"), status: status.as_u16(), detail }
    }

    pub(crate) fn transport_error(&self, e: reqwest::Error, path: &str) -> OobError {
        let peer = self.peer.clone();
        if e.is_timeout() {
            let secs = self.timeout.as_millis().div_ceil(1000) as u64;
            OobError::Timeout { peer, secs }
        } else if e.is_connect() {
            OobError::Connect { peer, detail: chain(&e) }
        } else {
            OobError::Protocol { peer, detail: format!("{path}: {}", chain(&e)) }
        }
    }
}

/// An error and its sources on one line, without repeating the URL twice.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
