#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eligo::fuzzing::case_file(data));
