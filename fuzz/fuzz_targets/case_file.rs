#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eligo_fuzz_targets::case_file(data));
