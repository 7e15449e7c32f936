//! How the frontend reaches model instances: the [`Instance`] seam (the gRPC
//! [`client::InstanceClient`] in serving, scripted instances in tests), one [`pool::Pool`] per
//! kind of instance (round-robin, retry, rotation, and the redundancy baselines replication
//! and hedging that the tail-latency benchmark compares parm with), health probes and the
//! per-instance breaker, and dispatch batching.

use std::time::Duration;

use futures::future::BoxFuture;

pub mod client;
pub mod discovery;
pub mod dispatch;
pub mod health;
pub mod pool;
pub mod redundancy;

pub use client::InstanceError;

/// One model instance as the frontend sees it: something that runs a model on a block of rows.
///
/// Implemented by [`client::InstanceClient`] (OIP gRPC); tests implement it with scripted
/// instances (slow, failing, wrong) to exercise the coded path, hedging and replication in
/// process.
pub trait Instance: Send + Sync + 'static {
    /// Where the instance is (an address, or a name in tests), for errors and logs.
    fn addr(&self) -> &str;

    /// False while the instance is out of rotation (its breaker is open after failures).
    fn usable(&self) -> bool {
        true
    }

    /// The host the instance runs on, when its entry names one (`ADDR@HOST`), for placement
    /// ([`pool::Pool::update`] spreads a pool's rotation over hosts; a coding group's parity
    /// query avoids its members' hosts). Default: unknown.
    fn host(&self) -> Option<&str> {
        None
    }

    /// Runs `model` on `input`, row-major of `shape` `[b, ...]`; returns `[b, output_len]`
    /// values.
    ///
    /// Errors: the instance's failure, with its address ([`InstanceError`]); a call that gets
    /// no answer within `timeout` is [`InstanceError::Timeout`].
    fn infer<'a>(
        &'a self,
        model: &'a str,
        input: &'a [f32],
        shape: &'a [i64],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>>;

    /// Opens the connection and checks that `model` is served (warm-up). Default: nothing to do.
    fn connect<'a>(&'a self, _model: &'a str, _timeout: Duration) -> BoxFuture<'a, Result<(), InstanceError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether the instance says `model` is ready; false on any error. Default: true.
    fn model_ready<'a>(&'a self, _model: &'a str, _timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
}

impl Instance for client::InstanceClient {
    fn addr(&self) -> &str {
        client::InstanceClient::addr(self)
    }

    fn usable(&self) -> bool {
        client::InstanceClient::usable(self)
    }

    fn host(&self) -> Option<&str> {
        client::InstanceClient::host(self)
    }

    fn infer<'a>(
        &'a self,
        model: &'a str,
        input: &'a [f32],
        shape: &'a [i64],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<f32>, InstanceError>> {
        Box::pin(client::InstanceClient::infer(self, model, input, shape, timeout))
    }

    fn connect<'a>(&'a self, model: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), InstanceError>> {
        Box::pin(async move { self.model_metadata(model, timeout).await.map(|_| ()) })
    }

    fn model_ready<'a>(&'a self, model: &'a str, timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(client::InstanceClient::model_ready(self, model, timeout))
    }
}
