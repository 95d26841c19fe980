//! Fuzz target `frame`: every input goes through [`herald_fuzz::frame`], which
//! holds the properties checked (shared with the corpus replay test on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::frame(data));
