//! libFuzzer entry point; the body is [`shardcast_fuzz::handshake`] (shared with the stable replay).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast_fuzz::handshake(data));
