//! parm-serve: the serving half of parm. Model instances ("workers") speak the Open Inference
//! Protocol (KServe v2, as spoken by Triton and MLServer) over gRPC, so any OIP server can stand
//! in for a parm worker and any OIP client can talk to one; the frontend groups queries into
//! coding groups, sends parity queries, and reconstructs slow predictions (ParM, SOSP'19).

pub mod backend;
pub mod client;
pub mod fault;
pub mod grpc;
pub mod worker;
pub mod frontend;
pub mod dispatch;
pub mod http;
pub mod redundancy;
pub mod straggler;
pub mod timer;
pub mod api;
pub mod health;
pub mod metrics;
pub mod tensor;
pub mod grpc_frontend;
pub mod server;
pub mod config;
pub mod batcher;
pub mod batch_coding;
pub mod security;
pub mod request;
pub mod admission;
