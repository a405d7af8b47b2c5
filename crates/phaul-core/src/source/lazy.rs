//! Post-copy's guard rails on the source: CRIU's lazy page server listens on
//! every interface, so its port is fenced to loopback while it serves, and
//! a dump that cannot be relayed is ended by a command CRIU rejects.

use crate::error::{Error, Result};

/// A port free on every interface of this network namespace right now.
pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).map_err(|source| Error::Io {
        what: "finding a free port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "finding a free port".into(),
            source,
        })
}

/// Writes the invalid command straight to CRIU's connection (no relay yet).
pub(super) async fn poison_direct(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(&crate::pagestream::POISON).await;
    let _ = s.flush().await;
}

/// An iptables rule in this network namespace that drops connections to a
/// port from anywhere but loopback, removed on drop.
pub(super) struct PortGuard {
    port: u16,
}

impl PortGuard {
    fn rule(port: u16) -> Vec<String> {
        [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "!",
            "-i",
            "lo",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub(super) fn install(port: u16) -> Result<Self> {
        let out = std::process::Command::new("iptables")
            .arg("-w")
            .arg("-I")
            .args(Self::rule(port))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Io { what: "running iptables to guard the lazy page server's port (scripts/setup.sh installs it)".into(), source })?;
        if !out.status.success() {
            return Err(Error::Io {
                what: format!(
                    "guarding the lazy page server's port with iptables: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("iptables failed"),
            });
        }
        Ok(Self { port })
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-w")
            .arg("-D")
            .args(Self::rule(self.port))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
