#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eligo_fuzz_targets::job_frame(data));
