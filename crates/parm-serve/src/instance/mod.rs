//! A model instance: one model (deployed or parity) behind one compute lane and its queue
//! (`executor`), with dynamic batching and injected faults for experiments; served over OIP
//! gRPC by `parm worker` (`worker`), or run in the frontend's own process (`local`).

pub mod backend;
pub mod batcher;
pub mod compute;
pub mod executor;
pub mod fault;
pub mod local;
pub mod worker;
