//! Route classifier on arbitrary method/path/query input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chartcache::fuzz_harness::check_classify(data);
});
