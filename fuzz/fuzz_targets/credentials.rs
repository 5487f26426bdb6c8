//! Credential extraction and the rebuilt upstream credential headers on
//! arbitrary request headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chartcache::fuzz_harness::check_credentials(data);
});
