//! Links for tests of what travels on them: a connected pair over a
//! socketpair, with a test key, and incompressible bytes to send.

use std::time::Duration;

use phaul_transport::{Channel, Link, LinkConfig, SharedKey};

/// The shared key of [`link_config`].
pub const TEST_KEY: &[u8] = b"a shared test key of 32 bytes...";

/// A link configuration with [`TEST_KEY`] (TLS on) and a handshake that
/// gives up after 10 seconds, so a broken test fails rather than hangs.
pub fn link_config() -> LinkConfig {
    LinkConfig::new(SharedKey::new(TEST_KEY).expect("a 32-byte key"))
        .handshake_timeout(Duration::from_secs(10))
}

/// A connected data channel `channel` of session `[7; 16]` over a Unix
/// socketpair, both ends configured by `cfg`: (the connecting end, the
/// accepting end), as (source, target) in a migration.
pub async fn link_pair(cfg: &LinkConfig, channel: Channel) -> (Link, Link) {
    let (a, b) = tokio::net::UnixStream::pair().expect("a socketpair");
    let (server, client) = tokio::join!(
        Link::accept(Box::pin(a), "test".into(), cfg),
        Link::connect_stream(Box::pin(b), cfg, channel, Some([7; 16]))
    );
    (
        client.expect("the connecting handshake"),
        server.expect("the accepting handshake"),
    )
}

/// `len` deterministic, incompressible bytes from `seed` (xorshift64). The
/// seed is spread first, so small seeds, 0 included, start with no run of
/// near-zero words.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_does_not_repeat_short_patterns() {
        assert_eq!(noise(1000, 3), noise(1000, 3));
        assert_ne!(noise(64, 3), noise(64, 5));
        let n = noise(4096, 0);
        assert_eq!(n.len(), 4096);
        assert_ne!(n[..2048], n[2048..]);
        assert!(n.iter().any(|b| *b != 0));
    }

    #[tokio::test]
    async fn a_pair_is_connected_both_ways() {
        let (mut a, mut b) = link_pair(&link_config(), Channel::Fs).await;
        a.writer.send_data(b"ping").await.unwrap();
        assert_eq!(b.reader.recv_data().await.unwrap().unwrap(), b"ping"[..]);
        b.writer.send_data(b"pong").await.unwrap();
        assert_eq!(a.reader.recv_data().await.unwrap().unwrap(), b"pong"[..]);
    }
}
