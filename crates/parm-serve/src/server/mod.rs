//! The client-facing frontend server: OIP over HTTP/JSON (and binary tensors) and gRPC,
//! request parsing and deadlines, admission, limits, metrics, the `parm.toml` file, and the
//! listeners with their connection limits and graceful drain.

pub mod admission;
pub mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod request;
