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
    /// Kept to derive other keys from (`derive`), so appliances sharing
    /// this key share those too.
    key: [u8; 32],
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
        SecretBox { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)), key }
    }

    /// From the configured hex key, else the configured key file (kept
    /// outside `data_dir`, so a copy of the data is no use alone), else
    /// `data_dir/secret-key`, else a new key written there.
    pub fn load(configured: &str, key_file: &Path, data_dir: &Path) -> anyhow::Result<SecretBox> {
        if !configured.is_empty() {
            return Ok(SecretBox::new(parse_key(configured).context("oob.secret_key")?));
        }
        if !key_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(key_file)
                .with_context(|| format!("oob.secret_key_file: reading {}", key_file.display()))?;
            return Ok(SecretBox::new(
                parse_key(text.trim()).with_context(|| format!("oob.secret_key_file {}", key_file.display()))?,
            ));
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

    /// A key for `purpose`, derived from this one: the same on every
    /// appliance sharing the key, useless for opening secrets.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"slipway derived key\n");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.key);
        hasher.finalize().into()
    }

    /// The Ed25519 key that signs what the appliance tells its agents.
    pub fn agent_signer(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.derive("agent signing key"))
    }

    /// [`open`](Self::open), for a column that held the secret in clear
    /// before it was sealed: a value that is not sealed (not hex, or too
    /// short to hold a nonce and tag) is that clear secret.
    pub fn open_or_clear(&self, stored: &str) -> Result<String, OpenError> {
        match hex::decode(stored) {
            Ok(bytes) if bytes.len() >= NONCE_LEN + 16 => self.open(stored),
            _ => Ok(stored.to_string()),
        }
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
        let none = Path::new("");
        let sealed = SecretBox::load("", none, dir.path()).unwrap().seal("x");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SecretBox::load("", none, dir.path()).unwrap().open(&sealed).unwrap(), "x");
        assert!(SecretBox::load("abcd", none, dir.path()).is_err(), "a short configured key is refused");
    }

    #[test]
    fn a_key_file_outside_the_data_directory_is_used_and_must_exist() {
        let (etc, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = etc.path().join("secret-key");
        assert!(SecretBox::load("", &file, data.path()).is_err(), "a missing key file is an error, not a new key");
        std::fs::write(&file, format!("{}\n", hex::encode([5u8; 32]))).unwrap();
        let sealed = SecretBox::load("", &file, data.path()).unwrap().seal("x");
        assert_eq!(SecretBox::new([5; 32]).open(&sealed).unwrap(), "x");
        assert!(!data.path().join("secret-key").exists(), "nothing written to data_dir");
    }

    #[test]
    fn a_secret_stored_before_sealing_reads_as_it_was() {
        let a = SecretBox::new([7; 32]);
        assert_eq!(a.open_or_clear("public").unwrap(), "public");
        assert_eq!(a.open_or_clear("SWMTKN-1-abc").unwrap(), "SWMTKN-1-abc");
        assert_eq!(a.open_or_clear(&a.seal("private")).unwrap(), "private");
        assert!(SecretBox::new([8; 32]).open_or_clear(&a.seal("private")).is_err(), "a wrong key is not 'clear'");
    }
}
