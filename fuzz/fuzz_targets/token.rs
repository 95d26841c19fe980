//! Fuzz target `token`: every input goes through [`herald_fuzz::token`], which
//! holds the properties checked (shared with the corpus replay test on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::token(data));
