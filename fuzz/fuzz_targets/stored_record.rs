//! Fuzz target `stored_record`: see keygate::fuzzing::stored_record.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::stored_record(data));
