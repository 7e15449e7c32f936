//! A model instance (`parm worker`): serves one model (deployed or parity) over OIP gRPC, with
//! one compute lane and its queue, dynamic batching, and injected faults for experiments.

pub mod backend;
pub mod batcher;
pub mod compute;
pub mod fault;
pub mod worker;
