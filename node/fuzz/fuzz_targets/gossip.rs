#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dynamo::fuzzing::gossip(data));
