//! parm-serve: the serving half of parm (ParM, "Parity Models", Kosaian et al., SOSP 2019).
//!
//! A map of the crate, in the order a query travels:
//!
//! - [`server`] faces clients: Open Inference Protocol over HTTP and gRPC, request parsing,
//!   deadlines, admission, metrics, configuration.
//! - [`coded`] is ParM's coded path: a query (or a request's batch, as one block of rows) joins
//!   a coding group, goes to a deployed-model instance, the group's parity query goes to a
//!   parity-model instance, and a late or lost prediction is decoded. [`coded::policy`] holds
//!   its pure timing rules.
//! - [`upstream`] reaches model instances: the instance client, pools with retry and
//!   rotation, health, dispatch batching, and the hedging and replication baselines.
//! - [`instance`] is a model instance (`parm worker`): the gRPC service, its compute lane,
//!   dynamic batching, backends, fault injection.
//! - [`oip`] is the protocol both sides speak: generated types, tensor codec, model spec, auth.
//! - [`timer`] gives sub-millisecond sleeps (tokio's timer rounds up to whole milliseconds).

pub mod coded;
pub mod instance;
pub mod oip;
pub mod server;
pub mod timer;
pub mod upstream;
