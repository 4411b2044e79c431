//! The query syntax: any text parses or gives an error with a column inside the text;
//! what parses prints to text that parses to the same query.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gossamer_query::fuzzing::check_query(data));
