//! The HTTP inference request parser (JSON and the binary tensor extension), exactly as the
//! frontend runs it: `parm_serve::server::request::parse_http`.
//!
//! Input layout: byte 0 chooses whether an `Inference-Header-Content-Length` header is sent
//! (odd: yes) and, with byte 1, its value (a length into the body, or sometimes garbage text);
//! the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parm_serve::oip::ModelSpec;

fuzz_target!(|data: &[u8]| {
    let spec = ModelSpec::fp32("m", vec![4], vec![3]);
    let Some((&mode, rest)) = data.split_first() else { return };
    let (header, body) = if mode & 1 == 0 {
        (None, rest)
    } else {
        let Some((&len, body)) = rest.split_first() else { return };
        let text = if mode & 2 == 0 { len.to_string() } else { format!("{}{}", len as char, mode >> 2) };
        (Some(text), body)
    };
    if let Ok(req) = parm_serve::server::request::parse_http(&spec, header.as_deref().map(str::as_bytes), body) {
        // What the frontend relies on: whole queries of the model's size, finite values.
        assert!(!req.rows.is_empty() && req.rows.len() <= parm_serve::server::api::MAX_BATCH_SIZE);
        for r in &req.rows {
            assert_eq!(r.len(), 4);
            assert!(r.iter().all(|v| v.is_finite()));
        }
    }
});
