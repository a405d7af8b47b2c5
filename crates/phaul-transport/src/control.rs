//! The control channel: numbered requests and their responses.

use crate::error::{Error, Result};
use crate::frame::Kind;
use crate::link::Link;
use crate::proto::{ErrorCode, Request, Response, request, response};

/// The source's side of a control channel.
#[derive(Debug)]
pub struct ControlClient {
    link: Link,
    next_id: u64,
}

impl ControlClient {
    /// Wraps an authenticated control link.
    pub fn new(link: Link) -> Self {
        Self { link, next_id: 1 }
    }

    /// The underlying link (its session id names the data channels).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Ends the channel cleanly (TLS close_notify, then FIN).
    pub async fn close(mut self) {
        let _ = self.link.writer.shutdown().await;
    }

    /// Sends a request and waits for its response. An `Error` answer is
    /// [`Error::Remote`]; an answer to another request is a protocol error.
    pub async fn call(&mut self, body: request::Body) -> Result<response::Body> {
        let id = self.next_id;
        self.next_id += 1;
        self.link
            .writer
            .send(
                Kind::Request,
                &Request {
                    id,
                    body: Some(body),
                },
            )
            .await?;
        let f = self.link.reader.read_frame().await?;
        match f.kind {
            Kind::Response => {
                let r: Response = crate::link::expect_msg(&f, Kind::Response)?;
                if r.id != id {
                    return Err(Error::Protocol(format!(
                        "response to request {} while {id} was asked",
                        r.id
                    )));
                }
                r.body
                    .ok_or_else(|| Error::Protocol(format!("empty response to request {id}")))
            }
            Kind::Error => {
                let e: crate::proto::Error = crate::link::expect_msg(&f, Kind::Error)?;
                Err(Error::Remote {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::ErrorInvalid),
                    message: e.message,
                })
            }
            other => Err(Error::Protocol(format!(
                "{other:?} frame on the control channel"
            ))),
        }
    }
}

/// The target's side of a control channel.
#[derive(Debug)]
pub struct ControlServer {
    link: Link,
    last_id: u64,
}

impl ControlServer {
    /// Wraps an authenticated control link.
    pub fn new(link: Link) -> Self {
        Self { link, last_id: 0 }
    }

    /// The underlying link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The next request: `Ok(None)` when the client closed the channel.
    /// Ids must grow by one from 1; a request without a body is answered
    /// with a protocol error.
    pub async fn next(&mut self) -> Result<Option<(u64, request::Body)>> {
        let f = match self.link.reader.recv().await {
            Ok(f) => f,
            Err(Error::Closed) => return Ok(None),
            Err(e) => return Err(e),
        };
        let r: Request = crate::link::expect_msg(&f, Kind::Request)?;
        if r.id != self.last_id + 1 {
            let msg = format!("request id {} after {}", r.id, self.last_id);
            let _ = self
                .link
                .writer
                .send_error(ErrorCode::Protocol, &msg, r.id)
                .await;
            return Err(Error::Protocol(msg));
        }
        self.last_id = r.id;
        match r.body {
            Some(b) => Ok(Some((r.id, b))),
            None => {
                self.error(r.id, ErrorCode::BadRequest, "empty request")
                    .await?;
                Err(Error::Protocol(format!("empty request {}", r.id)))
            }
        }
    }

    /// Answers request `id`.
    pub async fn reply(&mut self, id: u64, body: response::Body) -> Result<()> {
        self.link
            .writer
            .send(
                Kind::Response,
                &Response {
                    id,
                    body: Some(body),
                },
            )
            .await
    }

    /// Answers request `id` with an error.
    pub async fn error(&mut self, id: u64, code: ErrorCode, message: &str) -> Result<()> {
        self.link.writer.send_error(code, message, id).await
    }
}
