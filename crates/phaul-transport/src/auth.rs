//! The shared key and the proofs made with it.
//!
//! Each side proves it holds the key by an HMAC-SHA256 over the handshake
//! transcript: both hello messages (which carry a fresh 32-byte nonce from
//! each side) and, under TLS, 32 bytes exported from the TLS session (RFC
//! 5705/8446 exporter). A proof therefore cannot be replayed on another
//! connection, and a man in the middle who terminates TLS towards each side
//! sees two different exporter values and cannot forward a valid proof.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ring::{digest, hmac, rand::SecureRandom};

use crate::error::{Error, Result};

/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// The secret both hosts share. Its `Debug` does not show it.
#[derive(Clone)]
pub struct SharedKey(Arc<hmac::Key>);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

impl SharedKey {
    /// A key from its bytes (at least [`MIN_KEY_LEN`]).
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_KEY_LEN {
            return Err(Error::Key {
                path: "<memory>".into(),
                problem: format!("{} bytes; at least {MIN_KEY_LEN} are needed", secret.len()),
            });
        }
        Ok(Self(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret))))
    }

    /// Reads a key file: its content, without trailing white space, is the
    /// secret (for example `head -c 32 /dev/urandom | base64 > key`). A file
    /// others can read is refused, since the key grants root on the target.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let err = |problem: String| Error::Key {
            path: path.to_path_buf(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read it; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::new(&bytes[..end]).map_err(|e| match e {
            Error::Key { problem, .. } => err(problem),
            other => other,
        })
    }

    pub(crate) fn prove(&self, role: Role, transcript: &[u8; 32]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(role.label());
        ctx.update(transcript);
        ctx.sign().as_ref().to_vec()
    }

    pub(crate) fn verify(&self, role: Role, transcript: &[u8; 32], proof: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(role.label());
        msg.extend_from_slice(transcript);
        // Constant-time comparison.
        hmac::verify(&self.0, &msg, proof).is_ok()
    }
}

/// Which side a proof is for; the labels keep a client's proof from being
/// reflected back as a server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Client => b"phaul client proof",
            Self::Server => b"phaul server proof",
        }
    }
}

/// SHA-256 over the length-prefixed parts.
pub(crate) fn transcript(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `n` random bytes from the system's generator.
pub(crate) fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut v)
        .expect("the system random generator failed");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_role_and_transcript() {
        let k = SharedKey::new(b"0123456789abcdef0123").unwrap();
        let other = SharedKey::new(b"0123456789abcdef0124").unwrap();
        let t = transcript(&[b"hello", b"reply"]);
        let p = k.prove(Role::Client, &t);
        assert!(k.verify(Role::Client, &t, &p));
        assert!(!other.verify(Role::Client, &t, &p));
        assert!(!k.verify(Role::Server, &t, &p));
        assert!(!k.verify(Role::Client, &transcript(&[b"hello", b"replx"]), &p));
        // Length prefixes keep "ab"+"c" apart from "a"+"bc".
        assert_ne!(transcript(&[b"ab", b"c"]), transcript(&[b"a", b"bc"]));
    }

    #[test]
    fn short_keys_and_readable_key_files_are_refused() {
        assert!(SharedKey::new(b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SharedKey::from_file(&p), Err(Error::Key { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        SharedKey::from_file(&p).unwrap();
        std::fs::write(&p, "tooshort\n").unwrap();
        assert!(matches!(SharedKey::from_file(&p), Err(Error::Key { .. })));
        assert!(matches!(
            SharedKey::from_file(dir.path().join("none")),
            Err(Error::Key { .. })
        ));
    }
}
