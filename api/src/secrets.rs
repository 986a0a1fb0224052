//! Secrets at rest: BMC and UPS passwords are sealed with
//! ChaCha20-Poly1305 under the appliance's key before they reach the
//! database, and opened only to talk to the device. The key comes from
//! `oob.secret_key` (or `SLIPWAY_OOB_SECRET_KEY`), else from
//! `data_dir/secret-key`, generated (mode 0600) at first start.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a stored secret cannot be opened with this appliance's key (was oob.secret_key changed?)")]
pub struct OpenError;

impl SecretBox {
    pub fn new(key: [u8; 32]) -> SecretBox {
        SecretBox { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) }
    }

    /// From the configured hex key, else `data_dir/secret-key`, else a new
    /// key written there.
    pub fn load(configured: &str, data_dir: &Path) -> anyhow::Result<SecretBox> {
        if !configured.is_empty() {
            return Ok(SecretBox::new(parse_key(configured).context("oob.secret_key")?));
        }
        let path = data_dir.join("secret-key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(SecretBox::new(parse_key(text.trim()).with_context(|| path.display().to_string())?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                write_private(&path, &hex::encode(key))?;
                Ok(SecretBox::new(key))
            }
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Hex of nonce || ciphertext || tag.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self.cipher.encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).expect("in-memory encryption");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        hex::encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<String, OpenError> {
        let bytes = hex::decode(sealed).map_err(|_| OpenError)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), body).map_err(|_| OpenError)?;
        String::from_utf8(plain).map_err(|_| OpenError)
    }
}

/// Creates `path` readable by its owner only (0600) holding `line`; an
/// existing file is an error, never overwritten.
pub fn write_private(path: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text).context("not hex")?;
    let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("must be 64 hex digits (32 bytes), got {}", bytes.len() * 2);
    };
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let a = SecretBox::new([7; 32]);
        let sealed = a.seal("calvin");
        assert!(!sealed.contains(&hex::encode("calvin")), "not stored in clear");
        assert_ne!(sealed, a.seal("calvin"), "a fresh nonce every time");
        assert_eq!(a.open(&sealed).unwrap(), "calvin");
        assert!(SecretBox::new([8; 32]).open(&sealed).is_err());
        assert!(a.open("00").is_err() && a.open("zz").is_err());
    }

    #[test]
    fn a_generated_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SecretBox::load("", dir.path()).unwrap().seal("x");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SecretBox::load("", dir.path()).unwrap().open(&sealed).unwrap(), "x");
        assert!(SecretBox::load("abcd", dir.path()).is_err(), "a short configured key is refused");
    }
}
