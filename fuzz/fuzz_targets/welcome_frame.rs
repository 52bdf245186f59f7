#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eligo::fuzzing::welcome_frame(data));
