//! The real server handshake (`Link::accept`, plaintext) over an in-memory
//! stream that carries the fuzz input and then ends: it must fail cleanly
//! (or, in theory, succeed), never panic and never hang.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use phaul_transport::{Link, LinkConfig, SharedKey};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn config() -> LinkConfig {
    LinkConfig::new(SharedKey::new(b"0123456789abcdef").expect("a valid key"))
        .plaintext()
        .handshake_timeout(Duration::from_millis(200))
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        // Room for the whole input in the pipe, so writing it never waits
        // for the server, and for what the server answers.
        let (mut client, server) = tokio::io::duplex(data.len().max(64 * 1024));
        client.write_all(data).await.expect("the pipe has room");
        // End the client's direction but keep its end open, so the server
        // reads the input, then EOF, and its answers do not fail to write.
        client.shutdown().await.expect("shutdown of a duplex");
        let res = Link::accept(Box::pin(server), "fuzz".into(), &config()).await;
        if let Ok(link) = res {
            // Only a peer holding the key can get here; with random nonces
            // that is practically impossible, but it is not a bug.
            drop(link);
        }
        drop(client);
    });
});
