//! Every payload kind a producer can send on `logs.<stream>`: JSON, arrays, NDJSON,
//! MessagePack (by header or detected), text. Decoding either gives events within the
//! limits or an error; it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gossamer_schemas::fuzzing::check_payload(data));
