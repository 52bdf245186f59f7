#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eligo::fuzzing::queue_messages(data));
