//! Fuzz target `agent_template`: see keygate::fuzzing::agent_template.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::agent_template(data));
