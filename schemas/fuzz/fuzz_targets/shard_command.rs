//! The shard log's wire format: any bytes decode to a command or an error, and a
//! command that decodes encodes and decodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gossamer_schemas::fuzzing::check_shard_command(data));
