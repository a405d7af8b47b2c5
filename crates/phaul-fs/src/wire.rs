//! The messages of the native sync and of the rsync relay, and their
//! encoding.
//!
//! Messages travel inside the link's `DATA` frames as a byte stream:
//! message boundaries need not match frame boundaries, so many small
//! messages (a directory of small files) share one frame and one TLS
//! record, and a large file's content spans many. Each message is
//!
//! ```text
//!  tag: u8 | length: u32 LE | body: length bytes
//! ```
//!
//! and a body is fixed-width little-endian integers and byte strings (a
//! `u32 LE` length, then the bytes). Every length is bounded before
//! anything is allocated: a body at most [`MAX_MSG`] bytes ([`MAX_DATA`]
//! for [`Msg::Data`]), a byte string at most what is left of its body.
//! Paths are raw bytes here; they are validated where they are used
//! ([`crate::path::RelPath::parse`]), so that a bad one is refused with a
//! typed error naming it.
//!
//! The rsync relay puts exactly one message in a frame of its own (its
//! other frames carry rsync's bytes), see [`decode_frame`].

use bytes::{Buf, Bytes, BytesMut};
use phaul_transport::link::FrameReader;

use crate::error::{Error, Result};
use crate::tree::{Kind, Meta};

/// The largest body of a message other than [`Msg::Data`].
pub const MAX_MSG: usize = 64 * 1024;

/// The largest body of a [`Msg::Data`].
pub const MAX_DATA: usize = 256 * 1024;

/// The most arguments of a remote rsync command.
pub const MAX_ARGS: usize = 64;

/// Message tags.
pub mod tag {
    /// [`super::Msg::PassBegin`].
    pub const PASS_BEGIN: u8 = 1;
    /// [`super::Msg::Entry`].
    pub const ENTRY: u8 = 2;
    /// [`super::Msg::ManifestEnd`].
    pub const MANIFEST_END: u8 = 3;
    /// [`super::Msg::Mkdir`].
    pub const MKDIR: u8 = 4;
    /// [`super::Msg::Write`].
    pub const WRITE: u8 = 5;
    /// [`super::Msg::Data`].
    pub const DATA: u8 = 6;
    /// [`super::Msg::Symlink`].
    pub const SYMLINK: u8 = 7;
    /// [`super::Msg::Link`].
    pub const LINK: u8 = 8;
    /// [`super::Msg::Node`].
    pub const NODE: u8 = 9;
    /// [`super::Msg::SetMeta`].
    pub const SET_META: u8 = 10;
    /// [`super::Msg::Delete`].
    pub const DELETE: u8 = 11;
    /// [`super::Msg::PassEnd`].
    pub const PASS_END: u8 = 12;
    /// [`super::Msg::PassDone`].
    pub const PASS_DONE: u8 = 13;
    /// [`super::Msg::RsyncCommand`].
    pub const RSYNC_COMMAND: u8 = 20;
    /// [`super::Msg::RsyncAccepted`].
    pub const RSYNC_ACCEPTED: u8 = 21;
    /// [`super::Msg::RsyncExit`].
    pub const RSYNC_EXIT: u8 = 22;
}

/// One entry of the target's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative path; empty for the root.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes (regular files; 0 is fine for the others).
    pub size: u64,
    /// Mode, owner, mtime.
    pub meta: Meta,
    /// For a regular file with more than one link: an id shared by the
    /// manifest's paths that are the same inode; 0 otherwise.
    pub group: u64,
    /// A device's number.
    pub rdev: u64,
    /// A symlink's target; empty otherwise.
    pub link: Vec<u8>,
}

/// A message of the native sync (tags 1..=13) or of the rsync relay
/// (tags 20..=22). Who sends which is in the crate's protocol summary
/// ([`crate::native`], [`crate::rsync`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Source: a pass starts; `last` marks the final one, after which the
    /// target's service loop returns.
    PassBegin {
        /// 0 for the first pass.
        pass: u32,
        /// The final pass.
        last: bool,
    },
    /// Target: one entry of its tree.
    Entry(ManifestEntry),
    /// Target: the manifest is complete.
    ManifestEnd {
        /// How many entries it held.
        entries: u64,
    },
    /// Source: make a directory (mode, owner and times come later with a
    /// [`Msg::SetMeta`], after its children).
    Mkdir {
        /// Where.
        path: Vec<u8>,
    },
    /// Source: a regular file's content follows in [`Msg::Data`] messages,
    /// exactly `size` bytes; it replaces `path` atomically once complete.
    Write {
        /// Where.
        path: Vec<u8>,
        /// Bytes of content that follow.
        size: u64,
        /// Mode, owner, mtime, set before it is renamed into place.
        meta: Meta,
    },
    /// Source: content of the current [`Msg::Write`].
    Data(Bytes),
    /// Source: make (or replace) a symlink.
    Symlink {
        /// Where.
        path: Vec<u8>,
        /// Its target, stored as is and never followed.
        target: Vec<u8>,
        /// Owner and mtime (a symlink's mode is meaningless on Linux).
        meta: Meta,
    },
    /// Source: make `path` another name of the file at `to` (sent earlier
    /// in the pass, or already on the target).
    Link {
        /// The new name.
        path: Vec<u8>,
        /// The existing name.
        to: Vec<u8>,
    },
    /// Source: make (or replace) a fifo, socket or device node.
    Node {
        /// Where.
        path: Vec<u8>,
        /// [`Kind::Fifo`], [`Kind::Socket`], [`Kind::Char`] or
        /// [`Kind::Block`].
        kind: Kind,
        /// A device's number.
        rdev: u64,
        /// Mode, owner, mtime.
        meta: Meta,
    },
    /// Source: set an existing entry's mode (not for symlinks), owner and
    /// mtime.
    SetMeta {
        /// Which.
        path: Vec<u8>,
        /// The values.
        meta: Meta,
    },
    /// Source: remove an entry (a directory with everything in it).
    Delete {
        /// Which.
        path: Vec<u8>,
    },
    /// Source: the pass's last operation; the counts must match what the
    /// target applied.
    PassEnd {
        /// [`Msg::Write`]s sent.
        files: u64,
        /// Content bytes sent.
        bytes: u64,
        /// Operations sent (everything between the manifest and this).
        ops: u64,
    },
    /// Target: the pass is applied (and, for the last one, synced to disk).
    PassDone {
        /// Files written.
        files: u64,
        /// Content bytes written.
        bytes: u64,
        /// Entries removed (a directory's contents included).
        deleted: u64,
        /// Entries in the manifest the target sent.
        scanned: u64,
    },
    /// rsync source: the remote command rsync asked its remote shell to
    /// run (`rsync --server ...`), which the target validates.
    RsyncCommand {
        /// The final pass.
        last: bool,
        /// The command's words.
        argv: Vec<Vec<u8>>,
    },
    /// rsync target: the command is valid and runs; rsync's bytes follow.
    RsyncAccepted,
    /// rsync target: the remote rsync has ended.
    RsyncExit {
        /// Its exit code, or 128 + the signal that ended it.
        code: i32,
        /// The end of its standard error.
        stderr: Vec<u8>,
    },
}

// --- encoding ------------------------------------------------------------

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Callers keep byte strings far below 4 GiB (paths, symlink targets,
    // stderr tails are all bounded before they get here).
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}

fn put_meta(out: &mut Vec<u8>, m: &Meta) {
    put_u32(out, m.mode);
    put_u32(out, m.uid);
    put_u32(out, m.gid);
    out.extend_from_slice(&m.mtime_sec.to_le_bytes());
    put_u32(out, m.mtime_nsec);
}

/// Appends a [`Msg::Data`] header for `len` content bytes, which the
/// caller appends next (so file content is read straight into the output
/// buffer, not copied through a [`Bytes`]).
pub fn put_data_header(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len <= MAX_DATA);
    out.push(tag::DATA);
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

impl Msg {
    /// The message's tag.
    pub fn tag(&self) -> u8 {
        match self {
            Self::PassBegin { .. } => tag::PASS_BEGIN,
            Self::Entry(_) => tag::ENTRY,
            Self::ManifestEnd { .. } => tag::MANIFEST_END,
            Self::Mkdir { .. } => tag::MKDIR,
            Self::Write { .. } => tag::WRITE,
            Self::Data(_) => tag::DATA,
            Self::Symlink { .. } => tag::SYMLINK,
            Self::Link { .. } => tag::LINK,
            Self::Node { .. } => tag::NODE,
            Self::SetMeta { .. } => tag::SET_META,
            Self::Delete { .. } => tag::DELETE,
            Self::PassEnd { .. } => tag::PASS_END,
            Self::PassDone { .. } => tag::PASS_DONE,
            Self::RsyncCommand { .. } => tag::RSYNC_COMMAND,
            Self::RsyncAccepted => tag::RSYNC_ACCEPTED,
            Self::RsyncExit { .. } => tag::RSYNC_EXIT,
        }
    }

    /// Appends the encoded message (header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        let len_at = out.len();
        put_u32(out, 0);
        let start = out.len();
        match self {
            Self::PassBegin { pass, last } => {
                put_u32(out, *pass);
                out.push(u8::from(*last));
            }
            Self::Entry(e) => {
                put_bytes(out, &e.path);
                out.push(e.kind as u8);
                put_u64(out, e.size);
                put_meta(out, &e.meta);
                put_u64(out, e.group);
                put_u64(out, e.rdev);
                put_bytes(out, &e.link);
            }
            Self::ManifestEnd { entries } => put_u64(out, *entries),
            Self::Mkdir { path } | Self::Delete { path } => put_bytes(out, path),
            Self::Write { path, size, meta } => {
                put_bytes(out, path);
                put_u64(out, *size);
                put_meta(out, meta);
            }
            Self::Data(b) => out.extend_from_slice(b),
            Self::Symlink { path, target, meta } => {
                put_bytes(out, path);
                put_bytes(out, target);
                put_meta(out, meta);
            }
            Self::Link { path, to } => {
                put_bytes(out, path);
                put_bytes(out, to);
            }
            Self::Node {
                path,
                kind,
                rdev,
                meta,
            } => {
                put_bytes(out, path);
                out.push(*kind as u8);
                put_u64(out, *rdev);
                put_meta(out, meta);
            }
            Self::SetMeta { path, meta } => {
                put_bytes(out, path);
                put_meta(out, meta);
            }
            Self::PassEnd { files, bytes, ops } => {
                put_u64(out, *files);
                put_u64(out, *bytes);
                put_u64(out, *ops);
            }
            Self::PassDone {
                files,
                bytes,
                deleted,
                scanned,
            } => {
                put_u64(out, *files);
                put_u64(out, *bytes);
                put_u64(out, *deleted);
                put_u64(out, *scanned);
            }
            Self::RsyncCommand { last, argv } => {
                out.push(u8::from(*last));
                put_u32(out, u32::try_from(argv.len()).unwrap_or(u32::MAX));
                for a in argv {
                    put_bytes(out, a);
                }
            }
            Self::RsyncAccepted => {}
            Self::RsyncExit { code, stderr } => {
                out.extend_from_slice(&code.to_le_bytes());
                put_bytes(out, stderr);
            }
        }
        let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The encoded message on its own.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// The protocol error for this message where `expected` was due.
    pub fn unexpected(&self, expected: &str) -> Error {
        Error::Protocol(format!(
            "expected {expected}, got a message of tag {}",
            self.tag()
        ))
    }

    /// Decodes a body of `tag`; the body must be consumed exactly.
    pub fn decode(tag: u8, body: Bytes) -> Result<Self> {
        if tag == tag::DATA {
            return Ok(Self::Data(body));
        }
        let mut c = Cursor { b: &body, tag };
        let msg = match tag {
            tag::PASS_BEGIN => Self::PassBegin {
                pass: c.u32()?,
                last: c.flag()?,
            },
            tag::ENTRY => Self::Entry(ManifestEntry {
                path: c.bytes()?,
                kind: c.kind()?,
                size: c.u64()?,
                meta: c.meta()?,
                group: c.u64()?,
                rdev: c.u64()?,
                link: c.bytes()?,
            }),
            tag::MANIFEST_END => Self::ManifestEnd { entries: c.u64()? },
            tag::MKDIR => Self::Mkdir { path: c.bytes()? },
            tag::DELETE => Self::Delete { path: c.bytes()? },
            tag::WRITE => Self::Write {
                path: c.bytes()?,
                size: c.u64()?,
                meta: c.meta()?,
            },
            tag::SYMLINK => Self::Symlink {
                path: c.bytes()?,
                target: c.bytes()?,
                meta: c.meta()?,
            },
            tag::LINK => Self::Link {
                path: c.bytes()?,
                to: c.bytes()?,
            },
            tag::NODE => Self::Node {
                path: c.bytes()?,
                kind: c.kind()?,
                rdev: c.u64()?,
                meta: c.meta()?,
            },
            tag::SET_META => Self::SetMeta {
                path: c.bytes()?,
                meta: c.meta()?,
            },
            tag::PASS_END => Self::PassEnd {
                files: c.u64()?,
                bytes: c.u64()?,
                ops: c.u64()?,
            },
            tag::PASS_DONE => Self::PassDone {
                files: c.u64()?,
                bytes: c.u64()?,
                deleted: c.u64()?,
                scanned: c.u64()?,
            },
            tag::RSYNC_COMMAND => {
                let last = c.flag()?;
                let n = c.u32()? as usize;
                if n > MAX_ARGS {
                    return Err(Error::Protocol(format!(
                        "a remote command of {n} words (at most {MAX_ARGS})"
                    )));
                }
                let mut argv = Vec::with_capacity(n);
                for _ in 0..n {
                    argv.push(c.bytes()?);
                }
                Self::RsyncCommand { last, argv }
            }
            tag::RSYNC_ACCEPTED => Self::RsyncAccepted,
            tag::RSYNC_EXIT => Self::RsyncExit {
                code: c.i32()?,
                stderr: c.bytes()?,
            },
            other => return Err(Error::Protocol(format!("unknown message tag {other}"))),
        };
        if !c.b.is_empty() {
            return Err(Error::Protocol(format!(
                "{} stray bytes after a message of tag {tag}",
                c.b.len()
            )));
        }
        Ok(msg)
    }
}

/// Reads a body's fields, failing on truncation.
struct Cursor<'a> {
    b: &'a [u8],
    tag: u8,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() < n {
            return Err(Error::Protocol(format!(
                "truncated message of tag {}",
                self.tag
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn flag(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::Protocol(format!("flag of value {v}"))),
        }
    }

    fn kind(&mut self) -> Result<Kind> {
        let v = self.take(1)?[0];
        Kind::from_u8(v).ok_or_else(|| Error::Protocol(format!("unknown entry kind {v}")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        // The length is checked against what is left before any allocation.
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn meta(&mut self) -> Result<Meta> {
        let m = Meta {
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            mtime_sec: self.i64()?,
            mtime_nsec: self.u32()?,
        };
        if m.mode & !0o7777 != 0 {
            return Err(Error::Protocol(format!(
                "mode {:#o} has bits beyond the permissions",
                m.mode
            )));
        }
        // utimensat gives nanosecond values at and above 1e9 special
        // meanings (UTIME_NOW, UTIME_OMIT); none may come from the peer.
        if m.mtime_nsec >= 1_000_000_000 {
            return Err(Error::Protocol(format!(
                "mtime nanoseconds {} out of range",
                m.mtime_nsec
            )));
        }
        Ok(m)
    }
}

/// Splits the first complete message off `buf`, if there is one.
pub fn split_msg(buf: &mut BytesMut) -> Result<Option<Msg>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    let max = if tag == tag::DATA { MAX_DATA } else { MAX_MSG };
    if len > max {
        return Err(Error::Protocol(format!(
            "a message of tag {tag} and {len} bytes (at most {max})"
        )));
    }
    if buf.len() < 5 + len {
        buf.reserve(5 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len).freeze();
    Msg::decode(tag, body).map(Some)
}

/// Decodes a frame that must hold exactly one message (the rsync relay's
/// control messages).
pub fn decode_frame(frame: &[u8]) -> Result<Msg> {
    let mut buf = BytesMut::from(frame);
    match split_msg(&mut buf)? {
        Some(m) if buf.is_empty() => Ok(m),
        Some(_) => Err(Error::Protocol("stray bytes after a message".into())),
        None => Err(Error::Protocol("a truncated message".into())),
    }
}

/// Reads messages from a link's data frames, however they are split
/// across frames.
#[derive(Debug, Default)]
pub struct MsgReader {
    buf: BytesMut,
}

impl MsgReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next message. A `StreamEnd` frame here is a protocol violation
    /// (the native sync never ends a stream mid-session); a peer's `Error`
    /// frame is [`phaul_transport::Error::Remote`].
    pub async fn next(&mut self, rd: &mut FrameReader) -> Result<Msg> {
        loop {
            if let Some(m) = split_msg(&mut self.buf)? {
                return Ok(m);
            }
            match rd.recv_data().await? {
                // The sender fills each frame with whole messages, so the
                // buffer is mostly empty here: the frame's own buffer then
                // becomes it, and file content is not copied on its way.
                Some(b) if self.buf.is_empty() => self.buf = BytesMut::from(b),
                Some(b) => self.buf.extend_from_slice(&b),
                None => return Err(Error::Protocol("unexpected end of the data stream".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o4755,
            uid: 1234,
            gid: 4321,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
        }
    }

    fn all() -> Vec<Msg> {
        vec![
            Msg::PassBegin {
                pass: 3,
                last: true,
            },
            Msg::Entry(ManifestEntry {
                path: b"a/b".to_vec(),
                kind: Kind::Symlink,
                size: 7,
                meta: meta(),
                group: 9,
                rdev: 0x0103,
                link: b"../x".to_vec(),
            }),
            Msg::ManifestEnd { entries: 2 },
            Msg::Mkdir {
                path: b"d".to_vec(),
            },
            Msg::Write {
                path: b"f".to_vec(),
                size: 3,
                meta: meta(),
            },
            Msg::Data(Bytes::from_static(b"abc")),
            Msg::Symlink {
                path: b"s".to_vec(),
                target: b"/etc".to_vec(),
                meta: meta(),
            },
            Msg::Link {
                path: b"h2".to_vec(),
                to: b"h1".to_vec(),
            },
            Msg::Node {
                path: b"n".to_vec(),
                kind: Kind::Char,
                rdev: 259,
                meta: meta(),
            },
            Msg::SetMeta {
                path: Vec::new(),
                meta: meta(),
            },
            Msg::Delete {
                path: b"x".to_vec(),
            },
            Msg::PassEnd {
                files: 1,
                bytes: 2,
                ops: 3,
            },
            Msg::PassDone {
                files: 1,
                bytes: 2,
                deleted: 3,
                scanned: 4,
            },
            Msg::RsyncCommand {
                last: false,
                argv: vec![b"rsync".to_vec(), b"--server".to_vec()],
            },
            Msg::RsyncAccepted,
            Msg::RsyncExit {
                code: -1,
                stderr: b"oops".to_vec(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_split_anywhere() {
        let msgs = all();
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode(&mut stream);
        }
        // Feed the stream in pieces of every size from 1 to 17 bytes.
        for piece in 1..18 {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(m) = split_msg(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs);
            assert!(buf.is_empty());
        }
        for m in &msgs {
            assert_eq!(&decode_frame(&m.to_vec()).unwrap(), m);
        }
    }

    #[test]
    fn hostile_encodings_are_errors() {
        // Over-long bodies are refused from the header alone.
        let mut b = BytesMut::from(&[tag::MKDIR, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(split_msg(&mut b), Err(Error::Protocol(_))));
        let mut b = BytesMut::from(&[tag::DATA, 0x01, 0x00, 0x04, 0x00][..]);
        assert!(matches!(split_msg(&mut b), Err(Error::Protocol(_))));
        // A byte string longer than its body.
        let mut v = vec![tag::MKDIR, 8, 0, 0, 0];
        v.extend_from_slice(&100u32.to_le_bytes());
        v.extend_from_slice(b"abcd");
        assert!(matches!(decode_frame(&v), Err(Error::Protocol(_))));
        // Stray bytes, unknown tags, bad kinds, modes, nanoseconds.
        let mut v = Msg::Delete {
            path: b"x".to_vec(),
        }
        .to_vec();
        v[1] += 1;
        v.push(0);
        assert!(decode_frame(&v).is_err());
        assert!(decode_frame(&[99, 0, 0, 0, 0]).is_err());
        let mut bad_mode = meta();
        bad_mode.mode = 0o100644;
        let v = Msg::SetMeta {
            path: b"x".to_vec(),
            meta: bad_mode,
        }
        .to_vec();
        assert!(decode_frame(&v).is_err());
        let mut bad_ns = meta();
        bad_ns.mtime_nsec = (1 << 30) - 2; // UTIME_OMIT
        let v = Msg::SetMeta {
            path: b"x".to_vec(),
            meta: bad_ns,
        }
        .to_vec();
        assert!(decode_frame(&v).is_err());
        let mut v = Msg::Node {
            path: b"n".to_vec(),
            kind: Kind::Fifo,
            rdev: 0,
            meta: meta(),
        }
        .to_vec();
        let kind_at = 5 + 4 + 1;
        v[kind_at] = 42;
        assert!(decode_frame(&v).is_err());
    }
}
