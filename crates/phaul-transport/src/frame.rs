//! Frames: the unit of everything sent on a phaul link.
//!
//! ```text
//!  0        4        6        8                12
//!  +--------+--------+--------+----------------+-------------------+
//!  | magic  |version |  kind  |     length     |  payload (length) |
//!  +--------+--------+--------+----------------+-------------------+
//!    u32 LE   u16 LE   u16 LE      u32 LE
//! ```
//!
//! - `magic` is [`MAGIC`] (`"PHUL"`), so a peer that is not phaul is told
//!   apart from a garbled frame at once.
//! - `version` is the protocol version: [`HELLO_VERSION`] on the two hello
//!   frames, whose format never changes, and the negotiated version on every
//!   frame after them. 0 is invalid.
//! - `kind` says what the payload is ([`Kind`]); 0 is invalid and unknown
//!   kinds are refused.
//! - `length` is at most [`MAX_PAYLOAD`]; a larger frame is refused before
//!   anything is allocated for it.
//!
//! Payloads are protobuf messages of `crates/phaul-transport/proto/link.proto`, except
//! [`Kind::Data`] (raw bytes) and [`Kind::DataLz4`] (lz4-compressed bytes
//! prefixed with their decompressed size).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, FrameError};

/// `"PHUL"` as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PHUL");
/// The size of a frame header.
pub const HEADER_LEN: usize = 12;
/// The largest payload a frame may carry (16 MiB).
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The version field of `Hello` and `HelloReply` frames, fixed forever so
/// any two phaul versions can negotiate.
pub const HELLO_VERSION: u16 = 1;
/// The protocol versions this build speaks: 2 to 5. Version 1's `Begin`
/// carried the plan as strings, which a version-2 peer would read as an
/// invalid plan. Version 3 is version 2 plus the `MANAGE` channel (a
/// controller's requests, see [`crate::manage`]), which a link negotiated
/// at version 2 may not open. Version 4 is version 3 plus the `PagemapsOf`
/// and `ProbeLink` requests, which a source asks only on a link of version
/// 4. Version 5 is version 4 with `ProbeLink` served before `Begin` too,
/// where a version-4 target refuses it. A side can hold itself to an older
/// version with [`crate::LinkConfig::max_version`].
pub const MIN_VERSION: u16 = 2;
/// See [`MIN_VERSION`].
pub const MAX_VERSION: u16 = 5;
/// The first version with the `MANAGE` channel.
pub const MANAGE_VERSION: u16 = 3;
/// The first version with the `PagemapsOf` and `ProbeLink` requests.
pub const PAGEMAPS_VERSION: u16 = 4;
/// The first version whose target serves `ProbeLink` before `Begin`.
pub const EARLY_PROBE_VERSION: u16 = 5;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Kind {
    /// Client's first frame: `Hello`.
    Hello = 1,
    /// Server's answer: `HelloReply`.
    HelloReply = 2,
    /// Client's proof: `Auth`.
    Auth = 3,
    /// Server's proof: `AuthOk`.
    AuthOk = 4,
    /// `Error`, either way; the sender closes after a handshake error.
    Error = 5,
    /// `Request` (control channel).
    Request = 6,
    /// `Response` (control channel).
    Response = 7,
    /// Raw stream bytes.
    Data = 8,
    /// lz4-compressed stream bytes: u32 LE decompressed size, then the
    /// compressed block.
    DataLz4 = 9,
    /// `StreamEnd`: one direction of a byte stream has ended.
    StreamEnd = 10,
    /// `FileBegin` (image stream).
    FileBegin = 11,
    /// `FileEnd` (image stream).
    FileEnd = 12,
    /// `BatchEnd` (image stream, sender's last frame of a batch).
    BatchEnd = 13,
    /// `BatchAck` (image stream, receiver's answer).
    BatchAck = 14,
}

impl Kind {
    /// The kind for a wire value; 0 and unknown values are `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// Every kind: the wire values [`Kind::from_u16`] knows.
    pub const ALL: [Kind; 14] = [
        Self::Hello,
        Self::HelloReply,
        Self::Auth,
        Self::AuthOk,
        Self::Error,
        Self::Request,
        Self::Response,
        Self::Data,
        Self::DataLz4,
        Self::StreamEnd,
        Self::FileBegin,
        Self::FileEnd,
        Self::BatchEnd,
        Self::BatchAck,
    ];
}

/// A frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version.
    pub version: u16,
    /// Payload kind.
    pub kind: Kind,
    /// Payload length.
    pub length: u32,
}

impl Header {
    /// Writes the header's 12 bytes.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(MAGIC);
        out.put_u16_le(self.version);
        out.put_u16_le(self.kind as u16);
        out.put_u32_le(self.length);
    }

    /// Parses and checks a header: magic, a non-zero version, a known kind,
    /// a length within `max_payload`. Which version is acceptable is the
    /// link's business (it depends on the handshake's progress).
    pub fn decode(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<Self, FrameError> {
        let mut b = &bytes[..];
        let magic = b.get_u32_le();
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = b.get_u16_le();
        if version == 0 {
            return Err(FrameError::BadVersion(0));
        }
        let raw_kind = b.get_u16_le();
        let kind = Kind::from_u16(raw_kind).ok_or(FrameError::UnknownKind(raw_kind))?;
        let length = b.get_u32_le();
        if length > max_payload {
            return Err(FrameError::TooLarge {
                length,
                max: max_payload,
            });
        }
        Ok(Self {
            version,
            kind,
            length,
        })
    }
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version.
    pub version: u16,
    /// Payload kind.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Result<BytesMut, Error> {
        let length = u32::try_from(self.payload.len())
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or(Error::Frame(FrameError::TooLarge {
                length: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
                max: MAX_PAYLOAD,
            }))?;
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        Header {
            version: self.version,
            kind: self.kind,
            length,
        }
        .encode(&mut out);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Parses one frame from the front of `buf`: `Ok(None)` when more bytes
    /// are needed, `Ok(Some((frame, used)))` when one is complete. Never
    /// panics and never allocates more than the frame's checked length.
    pub fn parse(buf: &[u8], max_payload: u32) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            // Refuse a wrong magic as soon as its bytes are in, rather than
            // waiting for a whole header of garbage.
            let n = buf.len().min(4);
            if buf[..n] != MAGIC.to_le_bytes()[..n] {
                let mut m = [0u8; 4];
                m[..n].copy_from_slice(&buf[..n]);
                return Err(FrameError::BadMagic(u32::from_le_bytes(m)));
            }
            return Ok(None);
        };
        let h = Header::decode(head, max_payload)?;
        let end = HEADER_LEN + h.length as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let frame = Frame {
            version: h.version,
            kind: h.kind,
            payload: Bytes::copy_from_slice(&buf[HEADER_LEN..end]),
        };
        Ok(Some((frame, end)))
    }
}

/// Compresses stream bytes for a [`Kind::DataLz4`] frame.
pub fn lz4_compress(data: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(data)
}

/// Decompresses a [`Kind::DataLz4`] payload, refusing one that claims to
/// expand beyond `max` bytes, one whose claim is impossible for its size
/// (lz4 expands at most about 255 times), and one that does not decompress
/// to exactly the size it claims.
pub fn lz4_decompress(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let Some(size) = payload
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b) as usize)
    else {
        return Err(FrameError::BadCompression("no size prefix".into()));
    };
    if size > max {
        return Err(FrameError::BadCompression(format!(
            "claims {size} bytes, limit {max}"
        )));
    }
    // Checked before allocating, so a tiny frame cannot make us reserve
    // the full limit.
    let block = payload.len() - 4;
    if size > block.saturating_mul(255).saturating_add(16) {
        return Err(FrameError::BadCompression(format!(
            "claims {size} bytes from {block}"
        )));
    }
    let out = lz4_flex::block::decompress_size_prepended(payload)
        .map_err(|e| FrameError::BadCompression(e.to_string()))?;
    if out.len() != size {
        return Err(FrameError::BadCompression(format!(
            "claims {size} bytes, holds {}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, payload: &[u8]) -> Frame {
        Frame {
            version: 1,
            kind,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in Kind::ALL {
            let f = frame(kind, b"payload");
            let bytes = f.encode().unwrap();
            let (back, used) = Frame::parse(&bytes, MAX_PAYLOAD).unwrap().unwrap();
            assert_eq!(back, f);
            assert_eq!(used, bytes.len());
            assert_eq!(Kind::from_u16(kind as u16), Some(kind));
        }
    }

    #[test]
    fn zero_and_unknown_kinds_and_versions_are_refused() {
        let mut b = frame(Kind::Data, b"x").encode().unwrap();
        b[6..8].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            Frame::parse(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownKind(0))
        );
        b[6..8].copy_from_slice(&999u16.to_le_bytes());
        assert_eq!(
            Frame::parse(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownKind(999))
        );
        let mut b = frame(Kind::Data, b"x").encode().unwrap();
        b[4..6].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            Frame::parse(&b, MAX_PAYLOAD),
            Err(FrameError::BadVersion(0))
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut b = BytesMut::new();
        Header {
            version: 1,
            kind: Kind::Data,
            length: MAX_PAYLOAD + 1,
        }
        .encode(&mut b);
        assert!(matches!(
            Frame::parse(&b, MAX_PAYLOAD),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frames_ask_for_more_and_garbage_is_refused_early() {
        let b = frame(Kind::Request, b"abcdef").encode().unwrap();
        for cut in 0..b.len() {
            assert_eq!(
                Frame::parse(&b[..cut], MAX_PAYLOAD),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            Frame::parse(b"GET / HTTP/1.1\r\n", MAX_PAYLOAD),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            Frame::parse(b"G", MAX_PAYLOAD),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn lz4_round_trips_and_refuses_bombs() {
        let data = vec![42u8; 100_000];
        let c = lz4_compress(&data);
        assert!(c.len() < data.len() / 10);
        assert_eq!(lz4_decompress(&c, 1 << 20).unwrap(), data);
        assert!(lz4_decompress(&c, 1000).is_err());
        assert!(lz4_decompress(&[1, 2], 1000).is_err());
        assert!(lz4_decompress(&[10, 0, 0, 0, 0xff, 0xff], 1000).is_err());
        // Found by fuzzing: a frame claiming 10 bytes that holds 5.
        let short = [0x0a, 0, 0, 0, 0x50, 1, 2, 3, 4, 5];
        assert!(matches!(
            lz4_decompress(&short, 1 << 20),
            Err(FrameError::BadCompression(_))
        ));
        // A tiny frame may not claim megabytes.
        assert!(lz4_decompress(&[0, 0, 0x10, 0, 0x50, 1, 2, 3, 4, 5], 16 << 20).is_err());
    }
}
