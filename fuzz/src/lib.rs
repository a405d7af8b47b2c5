//! Checks shared by the fuzz targets in `fuzz_targets/` and the seed
//! generator in `src/bin/make_seeds.rs`.

use std::fmt::Debug;

use phaul_transport::frame::{Frame, Kind, lz4_decompress};
use phaul_transport::proto;
use prost::Message;

/// The decompressed size limit used for `DataLz4` payloads.
pub const LZ4_LIMIT: usize = 1 << 20;

/// Decodes `bytes` as `M`; if that works, the message must survive an
/// encode/decode round trip unchanged, and its announced encoded length
/// must be what encoding produced. Returns whether `bytes` decoded.
pub fn round_trip<M>(bytes: &[u8]) -> bool
where
    M: Message + Default + PartialEq + Debug,
{
    let Ok(msg) = M::decode(bytes) else {
        return false;
    };
    let enc = msg.encode_to_vec();
    assert_eq!(
        enc.len(),
        msg.encoded_len(),
        "encoded_len disagrees with encode"
    );
    let back = match M::decode(enc.as_slice()) {
        Ok(back) => back,
        Err(e) => panic!("re-encoded {msg:?} does not decode: {e}"),
    };
    assert_eq!(back, msg, "message changed over a round trip");
    // Map fields are hash maps, so the byte order of their entries may
    // differ between two encodings; the length may not.
    assert_eq!(
        back.encoded_len(),
        enc.len(),
        "encoded length changed over a round trip"
    );
    true
}

/// Decodes a frame's payload as what its kind says it is.
pub fn check_payload(frame: &Frame) {
    let p = frame.payload.as_ref();
    match frame.kind {
        Kind::Hello => drop(round_trip::<proto::Hello>(p)),
        Kind::HelloReply => drop(round_trip::<proto::HelloReply>(p)),
        Kind::Auth => drop(round_trip::<proto::Auth>(p)),
        Kind::AuthOk => drop(round_trip::<proto::AuthOk>(p)),
        Kind::Error => drop(round_trip::<proto::Error>(p)),
        Kind::Request => drop(round_trip::<proto::Request>(p)),
        Kind::Response => drop(round_trip::<proto::Response>(p)),
        Kind::Data => {}
        Kind::DataLz4 => {
            if let Ok(out) = lz4_decompress(p, LZ4_LIMIT) {
                assert!(out.len() <= LZ4_LIMIT, "lz4 output beyond its limit");
                // `lz4_decompress` takes the size prefix as an upper bound:
                // a block that expands to less than it announces is
                // accepted (reported; not a memory-safety issue), so only
                // "never more than announced" is asserted here.
                let claimed = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
                assert!(
                    out.len() <= claimed as usize,
                    "lz4 output beyond its announced size"
                );
            }
        }
        Kind::StreamEnd => drop(round_trip::<proto::StreamEnd>(p)),
        Kind::FileBegin => drop(round_trip::<proto::FileBegin>(p)),
        Kind::FileEnd => drop(round_trip::<proto::FileEnd>(p)),
        Kind::BatchEnd => drop(round_trip::<proto::BatchEnd>(p)),
        Kind::BatchAck => drop(round_trip::<proto::BatchAck>(p)),
        // `Kind` is non-exhaustive: a kind added later is simply not
        // decoded here until this list learns it.
        _ => {}
    }
}

/// The messages of `crates/phaul-transport/proto/link.proto`, in the order the first byte
/// of a `message_decode` input selects them (modulo their number). New
/// messages go at the end, so the committed seeds keep their meaning.
pub const MESSAGES: [&str; 28] = [
    "Hello",
    "HelloReply",
    "Auth",
    "AuthOk",
    "Error",
    "Request",
    "Response",
    "Ping",
    "Pong",
    "Preflight",
    "PreflightReply",
    "Begin",
    "Begun",
    "StartPageServer",
    "PageServerReady",
    "Restore",
    "Restored",
    "Commit",
    "Committed",
    "Abort",
    "Aborted",
    "FileBegin",
    "FileEnd",
    "BatchEnd",
    "BatchAck",
    "StreamEnd",
    "Images",
    "ImagesStored",
];

/// Round-trips `bytes` as message number `which` (modulo the number of
/// messages) of [`MESSAGES`]; returns whether it decoded.
pub fn message_round_trip(which: u8, bytes: &[u8]) -> bool {
    match usize::from(which) % MESSAGES.len() {
        0 => round_trip::<proto::Hello>(bytes),
        1 => round_trip::<proto::HelloReply>(bytes),
        2 => round_trip::<proto::Auth>(bytes),
        3 => round_trip::<proto::AuthOk>(bytes),
        4 => round_trip::<proto::Error>(bytes),
        5 => round_trip::<proto::Request>(bytes),
        6 => round_trip::<proto::Response>(bytes),
        7 => round_trip::<proto::Ping>(bytes),
        8 => round_trip::<proto::Pong>(bytes),
        9 => round_trip::<proto::Preflight>(bytes),
        10 => round_trip::<proto::PreflightReply>(bytes),
        11 => round_trip::<proto::Begin>(bytes),
        12 => round_trip::<proto::Begun>(bytes),
        13 => round_trip::<proto::StartPageServer>(bytes),
        14 => round_trip::<proto::PageServerReady>(bytes),
        15 => round_trip::<proto::Restore>(bytes),
        16 => round_trip::<proto::Restored>(bytes),
        17 => round_trip::<proto::Commit>(bytes),
        18 => round_trip::<proto::Committed>(bytes),
        19 => round_trip::<proto::Abort>(bytes),
        20 => round_trip::<proto::Aborted>(bytes),
        21 => round_trip::<proto::FileBegin>(bytes),
        22 => round_trip::<proto::FileEnd>(bytes),
        23 => round_trip::<proto::BatchEnd>(bytes),
        24 => round_trip::<proto::BatchAck>(bytes),
        25 => round_trip::<proto::StreamEnd>(bytes),
        26 => round_trip::<proto::Images>(bytes),
        _ => round_trip::<proto::ImagesStored>(bytes),
    }
}
