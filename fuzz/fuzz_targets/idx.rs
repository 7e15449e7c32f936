//! The IDX reader (plain or gzip-compressed), `parm_data::parse_idx`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parm_data::parse_idx(data) {
        assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
        // What it accepts, it writes back the same.
        assert_eq!(parm_data::parse_idx(&a.to_bytes()).unwrap(), a);
    }
});
