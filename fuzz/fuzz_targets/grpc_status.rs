//! `tower_llm_resilience::classify::fuzzing::grpc_status` on the fuzzer's bytes
//! (the same entry point as `tests/parsers_fuzz.rs` on stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_llm_resilience::classify::fuzzing::grpc_status(data);
});
