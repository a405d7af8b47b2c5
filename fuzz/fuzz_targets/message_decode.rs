//! The first byte picks a message of `link.proto`, the rest is decoded as
//! it; what decodes must survive an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phaul_transport_fuzz::message_round_trip;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, bytes)) = data.split_first() {
        message_round_trip(which, bytes);
    }
});
