#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_proto::fuzzing::mpeg_ts(data));
