//! A controller's requests on the `MANAGE` channel (protocol version 3):
//! "move this thing of yours to that service", its events, its end, and a
//! cancel. See the crate's docs for the sequence.
//!
//! Both ends are typed state machines: each state is a type, and each step
//! consumes it, so an order cannot be sent twice, accepted after a refusal,
//! or reported on before it was accepted.
//!
//! - Controller: [`Controller`] (connected) --`order`--> [`Ordered`]
//!   (accepted), split into [`Updates`] (events until the end) and a
//!   [`Canceller`].
//! - Service: [`OrderDesk`] (authenticated) --`order`--> [`PendingOrder`]
//!   --`accept`--> [`Reporter`] (events, then the end) and [`CancelWatch`];
//!   or --`refuse`--> done.

use crate::error::{Error, Result};
use crate::frame::Kind;
use crate::link::{Endpoint, FrameReader, FrameWriter, Link, LinkConfig, expect_msg};
use crate::proto::{
    CancelMigration, Channel, ErrorCode, MigrateOrder, MigrationAccepted, MigrationEnded,
    MigrationEvent, Request, Response, request, response,
};

/// The order is request 1 of a link, a cancel request 2.
const ORDER_ID: u64 = 1;
const CANCEL_ID: u64 = 2;

/// A controller's authenticated link to a source's service, nothing asked
/// yet.
#[derive(Debug)]
pub struct Controller {
    link: Link,
}

impl Controller {
    /// Connects to the service at `endpoint` and proves the key.
    pub async fn connect(endpoint: Endpoint, cfg: &LinkConfig) -> Result<Self> {
        let link = Link::connect(endpoint, cfg, Channel::Manage, None).await?;
        Ok(Self { link })
    }

    /// Sends the order and waits until the service accepts it
    /// ([`Error::Remote`] with its code and reason when it refuses).
    pub async fn order(mut self, order: MigrateOrder) -> Result<Ordered> {
        let req = Request {
            id: ORDER_ID,
            body: Some(request::Body::Migrate(order)),
        };
        self.link.writer.send(Kind::Request, &req).await?;
        let (mut reader, writer) = self.link.into_split();
        match answer(&mut reader).await? {
            response::Body::MigrationAccepted(a) => Ok(Ordered {
                migration_id: a.migration_id,
                updates: Updates {
                    reader,
                    ended: false,
                },
                canceller: Canceller { writer },
            }),
            other => Err(Error::Protocol(format!(
                "{other:?} before the order was accepted"
            ))),
        }
    }
}

/// An accepted order: its migration's id, its updates and its cancel.
#[derive(Debug)]
pub struct Ordered {
    migration_id: String,
    updates: Updates,
    canceller: Canceller,
}

impl Ordered {
    /// The migration's id, which its events and report carry.
    pub fn migration_id(&self) -> &str {
        &self.migration_id
    }

    /// The updates and the cancel, to be used apart (the cancel from
    /// another task while the updates are read).
    pub fn split(self) -> (Updates, Canceller) {
        (self.updates, self.canceller)
    }
}

/// What the service says about an accepted order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A progress event: the JSON of phaul-core's `Event`.
    Event(String),
    /// The end; nothing follows.
    Ended(MigrationEnded),
}

/// The updates of an accepted order, up to its end.
#[derive(Debug)]
pub struct Updates {
    reader: FrameReader,
    ended: bool,
}

impl Updates {
    /// The next update; `Ok(None)` after the end. A link that closes before
    /// the end is [`Error::Closed`].
    pub async fn next(&mut self) -> Result<Option<Update>> {
        if self.ended {
            return Ok(None);
        }
        match answer(&mut self.reader).await? {
            response::Body::MigrationEvent(e) => Ok(Some(Update::Event(e.event_json))),
            response::Body::MigrationEnded(e) => {
                self.ended = true;
                Ok(Some(Update::Ended(e)))
            }
            other => Err(Error::Protocol(format!(
                "{other:?} while a migration was reported"
            ))),
        }
    }
}

/// Cancels an accepted order, once.
#[derive(Debug)]
pub struct Canceller {
    writer: FrameWriter,
}

impl Canceller {
    /// Asks the service to stop the migration; its end comes as the last
    /// [`Update`]. Closing the link instead has the same effect.
    pub async fn cancel(mut self) -> Result<()> {
        let req = Request {
            id: CANCEL_ID,
            body: Some(request::Body::CancelMigration(CancelMigration {})),
        };
        self.writer.send(Kind::Request, &req).await
    }

    /// Ends the controller's half of the link: the service reads it as
    /// going away, and cancels.
    pub async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

/// The next answer to the order (an `Error` frame is [`Error::Remote`],
/// as `recv` makes it).
async fn answer(reader: &mut FrameReader) -> Result<response::Body> {
    let f = reader.recv().await?;
    let r: Response = expect_msg(&f, Kind::Response)?;
    if r.id != ORDER_ID {
        return Err(Error::Protocol(format!(
            "an answer to request {} on a controller's link",
            r.id
        )));
    }
    r.body
        .ok_or_else(|| Error::Protocol("an empty answer to the order".into()))
}

/// The service's end of a controller's link, before the order.
#[derive(Debug)]
pub struct OrderDesk {
    link: Link,
}

impl OrderDesk {
    /// Wraps an authenticated `MANAGE` link.
    pub fn new(link: Link) -> Self {
        Self { link }
    }

    /// Reads the order: request 1, a `MigrateOrder`. Anything else is
    /// answered with an error and returned as one.
    pub async fn order(mut self) -> Result<(MigrateOrder, PendingOrder)> {
        let f = self.link.reader.recv().await?;
        let req: Request = match expect_msg(&f, Kind::Request) {
            Ok(r) => r,
            Err(e) => {
                self.link.refuse(ErrorCode::Protocol, &e.to_string()).await;
                return Err(e);
            }
        };
        match (req.id, req.body) {
            (ORDER_ID, Some(request::Body::Migrate(order))) => {
                Ok((order, PendingOrder { link: self.link }))
            }
            (id, body) => {
                let why = format!(
                    "a controller's link takes one MigrateOrder as request 1, not {:?} as request {id}",
                    body.map(|b| std::mem::discriminant(&b))
                );
                self.link.refuse(ErrorCode::Protocol, &why).await;
                Err(Error::Protocol(why))
            }
        }
    }
}

/// An order read, neither accepted nor refused yet.
#[derive(Debug)]
pub struct PendingOrder {
    link: Link,
}

impl PendingOrder {
    /// The controller's address, for logs.
    pub fn peer(&self) -> &str {
        self.link.peer()
    }

    /// Refuses the order (`BAD_REQUEST` for one that fails the checks) and
    /// closes the link.
    pub async fn refuse(mut self, code: ErrorCode, message: &str) {
        let _ = self.link.writer.send_error(code, message, ORDER_ID).await;
        let _ = self.link.writer.shutdown().await;
    }

    /// Accepts the order under `migration_id`: then report its events and
    /// its end, and watch for a cancel.
    pub async fn accept(mut self, migration_id: &str) -> Result<(Reporter, CancelWatch)> {
        send_answer(
            &mut self.link.writer,
            response::Body::MigrationAccepted(MigrationAccepted {
                migration_id: migration_id.to_string(),
            }),
        )
        .await?;
        let (reader, writer) = self.link.into_split();
        Ok((Reporter { writer }, CancelWatch { reader }))
    }
}

async fn send_answer(writer: &mut FrameWriter, body: response::Body) -> Result<()> {
    let r = Response {
        id: ORDER_ID,
        body: Some(body),
    };
    writer.send(Kind::Response, &r).await
}

/// Reports an accepted order's events and then its end.
#[derive(Debug)]
pub struct Reporter {
    writer: FrameWriter,
}

impl Reporter {
    /// One progress event (phaul-core's `Event` as JSON).
    pub async fn event(&mut self, event_json: String) -> Result<()> {
        send_answer(
            &mut self.writer,
            response::Body::MigrationEvent(MigrationEvent { event_json }),
        )
        .await
    }

    /// The end, after which the link closes.
    pub async fn ended(mut self, end: MigrationEnded) -> Result<()> {
        send_answer(&mut self.writer, response::Body::MigrationEnded(end)).await?;
        self.writer.shutdown().await
    }
}

/// Why a controller's migration should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The controller sent `CancelMigration`.
    Cancel,
    /// The link closed or broke, or the controller broke the protocol: no
    /// one follows the migration any more.
    Gone,
}

/// Watches a controller's link for its cancel.
#[derive(Debug)]
pub struct CancelWatch {
    reader: FrameReader,
}

impl CancelWatch {
    /// Resolves when the controller cancels or goes away.
    pub async fn wait(mut self) -> Stop {
        let Ok(f) = self.reader.recv().await else {
            return Stop::Gone;
        };
        match expect_msg::<Request>(&f, Kind::Request) {
            Ok(Request {
                id: CANCEL_ID,
                body: Some(request::Body::CancelMigration(_)),
            }) => Stop::Cancel,
            _ => Stop::Gone,
        }
    }
}
