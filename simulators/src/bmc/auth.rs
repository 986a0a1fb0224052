//! Who may talk to a simulated BMC: one account, checked by HTTP basic
//! auth or by a Redfish session (`X-Auth-Token`). Sessions live in memory,
//! at most `MAX_SESSIONS` (the oldest is dropped), and end on `DELETE`.

use std::sync::Mutex;

use axum::http::HeaderMap;

use inventory::oob::Credentials;

const MAX_SESSIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    token: String,
    pub user: String,
}

#[derive(Debug)]
pub struct Auth {
    credentials: Credentials,
    sessions: Mutex<(u64, Vec<Session>)>,
}

impl Auth {
    pub fn new(credentials: Credentials) -> Auth {
        Auth { credentials, sessions: Mutex::new((0, Vec::new())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Session>)> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        // Both compared in full, so timing does not say which was wrong.
        let user_ok = constant_time_eq(user.as_bytes(), self.credentials.username.as_bytes());
        let password_ok = constant_time_eq(password.as_bytes(), self.credentials.password.as_bytes());
        user_ok & password_ok
    }

    /// A new session for `user` (already checked), with its token.
    pub fn login(&self, user: &str) -> (Session, String) {
        let mut guard = self.lock();
        let (next, sessions) = &mut *guard;
        *next += 1;
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        let session = Session { id: next.to_string(), token: random_token(), user: user.into() };
        sessions.push(session.clone());
        let token = session.token.clone();
        (session, token)
    }

    pub fn logout(&self, id: &str) -> bool {
        let mut guard = self.lock();
        let before = guard.1.len();
        guard.1.retain(|s| s.id != id);
        guard.1.len() != before
    }

    pub fn session(&self, id: &str) -> Option<Session> {
        self.lock().1.iter().find(|s| s.id == id).cloned()
    }

    pub fn session_ids(&self) -> Vec<String> {
        self.lock().1.iter().map(|s| s.id.clone()).collect()
    }

    /// A request may pass: a live session's token, or basic auth with the
    /// account.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
            return self.lock().1.iter().any(|s| constant_time_eq(s.token.as_bytes(), token.as_bytes()));
        }
        let Some(basic) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        else {
            return false;
        };
        let Some(decoded) = base64_decode(basic.trim()).and_then(|b| String::from_utf8(b).ok()) else {
            return false;
        };
        decoded.split_once(':').is_some_and(|(user, password)| self.check_password(user, password))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 random bits as hex, from the kernel; a hash of the time and a
/// per-process random key if `/dev/urandom` cannot be read.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (RFC 4648), as basic auth uses.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        Auth::new(Credentials { username: "admin".into(), password: "pw".into() })
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn base64_decodes_what_basic_auth_sends() {
        assert_eq!(base64_decode("YWRtaW46cHc="), Some(b"admin:pw".to_vec()));
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode("YWJj"), Some(b"abc".to_vec()));
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("YQ="), None);
        assert_eq!(base64_decode("Y=Q="), None);
        assert_eq!(base64_decode("YQ==YQ=="), None);
        assert_eq!(base64_decode("Y!=="), None);
    }

    #[test]
    fn basic_auth_and_session_tokens_are_accepted_until_logout() {
        let a = auth();
        assert!(!a.allows(&HeaderMap::new()));
        assert!(a.allows(&headers("authorization", "Basic YWRtaW46cHc=")));
        assert!(!a.allows(&headers("authorization", "Basic YWRtaW46cHg=")));
        let (session, token) = a.login("admin");
        assert_eq!(token.len(), 32);
        assert!(a.allows(&headers("x-auth-token", &token)));
        assert!(!a.allows(&headers("x-auth-token", "nope")));
        assert!(a.logout(&session.id));
        assert!(!a.logout(&session.id));
        assert!(!a.allows(&headers("x-auth-token", &token)));
    }

    #[test]
    fn sessions_are_bounded() {
        let a = auth();
        let (first, token) = a.login("admin");
        for _ in 0..MAX_SESSIONS {
            a.login("admin");
        }
        assert!(a.session(&first.id).is_none());
        assert!(!a.allows(&headers("x-auth-token", &token)));
        assert_eq!(a.session_ids().len(), MAX_SESSIONS);
    }
}
