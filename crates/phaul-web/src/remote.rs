//! The target host's processes: a `ListProcesses` request to its
//! `phaul-service` over the authenticated link.
//!
//! One control session is kept open between requests (the page asks every
//! second) and opened again when it breaks, e.g. after the service was
//! restarted.

use std::time::Duration;

use phaul_core::target::error_chain;
use phaul_transport::proto::{self, ProcessList, request, response};
use phaul_transport::{Channel, ControlClient, Endpoint, Link, LinkConfig};
use tokio::sync::Mutex;

/// How long connecting or one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The target's `phaul-service`, as seen from here.
pub struct Remote {
    target: String,
    link: LinkConfig,
    conn: Mutex<Option<ControlClient>>,
}

impl Remote {
    /// The service at `target`, reached with `link`.
    pub fn new(target: String, link: LinkConfig) -> Self {
        Self {
            target,
            link,
            conn: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<ControlClient, String> {
        let endpoint = Endpoint::parse(&self.target).map_err(|e| e.to_string())?;
        let link = tokio::time::timeout(
            TIMEOUT,
            Link::connect(endpoint, &self.link, Channel::Control, None),
        )
        .await
        .map_err(|_| format!("connecting to {} timed out", self.target))?
        .map_err(|e| format!("connecting to {}: {}", self.target, error_chain(&e)))?;
        Ok(ControlClient::new(link))
    }

    /// What runs on the target now.
    pub async fn list(&self) -> Result<ProcessList, String> {
        let mut conn = self.conn.lock().await;
        // A kept session may have died since the last request: one retry
        // on a fresh one.
        for attempt in 0..2 {
            let fresh = conn.is_none();
            let client = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.connect().await?),
            };
            let body = request::Body::ListProcesses(proto::ListProcesses {});
            let err = match tokio::time::timeout(TIMEOUT, client.call(body)).await {
                Ok(Ok(response::Body::ProcessList(l))) => return Ok(l),
                Ok(Ok(other)) => format!("unexpected answer from the target: {other:?}"),
                Ok(Err(e)) => format!(
                    "asking {} for its processes: {}",
                    self.target,
                    error_chain(&e)
                ),
                Err(_) => format!("asking {} for its processes timed out", self.target),
            };
            *conn = None;
            if fresh || attempt == 1 {
                return Err(err);
            }
        }
        Err("unreachable".into())
    }
}
