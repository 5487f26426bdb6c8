//! Canonicalizer and cache key on arbitrary route/content-type/query/body input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chartcache::fuzz_harness::check_fingerprint(data);
});
