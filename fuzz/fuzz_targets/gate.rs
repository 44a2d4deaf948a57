//! libFuzzer entry point; the body is [`shardcast_fuzz::gate`] (shared with the stable replay).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast_fuzz::gate(data));
