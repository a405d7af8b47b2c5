//! Arbitrary bytes as a sequence of frames: `Frame::parse` must never
//! panic, each frame it returns must re-encode to exactly the bytes it
//! consumed, and each payload is decoded as what its kind says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phaul_transport::frame::{Frame, HEADER_LEN, MAX_PAYLOAD};
use phaul_transport_fuzz::check_payload;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Ok(None) (need more bytes) or an error ends the stream.
    while let Ok(Some((frame, used))) = Frame::parse(rest, MAX_PAYLOAD) {
        assert!(
            used >= HEADER_LEN && used <= rest.len(),
            "used {used} of {}",
            rest.len()
        );
        assert_eq!(used, HEADER_LEN + frame.payload.len());
        let again = frame.encode().expect("a parsed frame re-encodes");
        assert_eq!(
            &again[..],
            &rest[..used],
            "re-encoding changed the frame's bytes"
        );
        check_payload(&frame);
        rest = &rest[used..];
    }
});
