//! Write-path classification and the purge it implies, however the path is spelled.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chartcache::fuzz_harness::check_write_path(data);
});
