//! Generated Open Inference Protocol types and stubs (package `inference`, service
//! `GRPCInferenceService`, from KServe's `grpc_predict_v2.proto`; Triton's `grpc_service.proto`
//! is a wire-compatible superset), plus the little-endian FP32 tensor codec used by
//! `raw_input_contents` / `raw_output_contents`.
//!
//! Useful paths: [`grpc_inference_service_server::GrpcInferenceServiceServer`],
//! [`grpc_inference_service_client::GrpcInferenceServiceClient`], [`ModelInferRequest`],
//! [`model_infer_request::InferInputTensor`], [`model_infer_response::InferOutputTensor`],
//! [`InferTensorContents`], [`InferParameter`] / [`infer_parameter::ParameterChoice`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

// Generated from proto/grpc_predict_v2.proto by build.rs (scripts/regenerate-proto.sh).
include!("generated/inference.rs");

/// Largest gRPC message (bytes) parm's worker and client accept or send. tonic's default is
/// 4 MiB, too small for batched image queries (one 224x224x3 FP32 query is ~600 KB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Streams a client may reset before the server accepted them, before a parm worker closes the
/// connection (h2's default is 20, a guard against the HTTP/2 rapid-reset attack).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 65_536;

/// HTTP/2 per-stream flow-control window (bytes) used by parm's worker and client.
pub const H2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 per-connection flow-control window (bytes) used by parm's worker and client.
pub const H2_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Serialises f32 values as little-endian bytes, row-major, no padding (OIP raw tensor format).
pub fn encode_f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Parses little-endian f32 bytes. Returns `None` when the length is not a multiple of 4.
pub fn decode_f32_le(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    let chunks = bytes.chunks_exact(4);
    Some(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
