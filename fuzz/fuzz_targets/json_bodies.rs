#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| durable_streams_server_fuzz::targets::json_bodies(data));
