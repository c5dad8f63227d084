//! Fuzz target `token`: see keygate::fuzzing::token.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::token(data));
