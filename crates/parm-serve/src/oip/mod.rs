//! The Open Inference Protocol (KServe v2, as spoken by Triton and MLServer), shared by the
//! model instances and the frontend: the generated gRPC types and the FP32 codec, the
//! [`ModelSpec`] a model advertises, and the auth token and limits both sides enforce.

pub mod grpc;
pub mod security;
mod spec;
pub mod tensor;
pub mod tls;

pub use spec::ModelSpec;
