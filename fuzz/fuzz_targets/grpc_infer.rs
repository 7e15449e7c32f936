//! The gRPC frontend's ModelInferRequest path: protobuf decoding (prost, as tonic does) and
//! conversion to tensors, `parm_serve::server::request::decode_grpc`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parm_serve::oip::ModelSpec;

fuzz_target!(|data: &[u8]| {
    let spec = ModelSpec::fp32("m", vec![4], vec![3]);
    if let Ok(rows) = parm_serve::server::request::decode_grpc(&spec, data) {
        assert!(!rows.is_empty() && rows.len() <= parm_serve::server::api::MAX_BATCH_SIZE);
        for r in &rows {
            assert_eq!(r.len(), 4);
            assert!(r.iter().all(|v| v.is_finite()));
        }
    }
});
