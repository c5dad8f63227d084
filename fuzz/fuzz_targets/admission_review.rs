//! Fuzz target `admission_review`: see keygate::fuzzing::admission_review.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::admission_review(data));
