//! Stored block frames: whole, picked positions and the lite view agree or fail, never
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gossamer_schemas::fuzzing::check_event_frame(data));
