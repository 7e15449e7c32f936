//! Runs the frontend's interfaces together: OIP HTTP (with `/metrics`), OIP gRPC with
//! `grpc.health.v1`, and optionally a separate Prometheus port, all over one
//! [`crate::server::api::Serving`], until one shared shutdown signal.
//!
//! # Graceful shutdown
//! When the shutdown signal resolves (SIGTERM or Ctrl-C in `parm serve`):
//! 1. admission closes ([`crate::server::admission::Admission::close`]): readiness turns false and any
//!    request that still reaches the frontend (on a kept-alive connection) gets 503 +
//!    `Retry-After`, "shutting down";
//! 2. the listeners stop accepting connections; idle connections are closed, HTTP/2 ones get
//!    GOAWAY;
//! 3. requests already admitted run to their answer (prediction, reconstruction or error);
//! 4. when all are answered, or at the drain deadline at the latest, the servers end and
//!    [`serve_all_draining`] returns `Ok` (`parm serve` then exits 0). Requests still open at
//!    the deadline are dropped (their connections closed) and counted in a warning.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::api::Shared;

/// Default drain deadline after the shutdown signal (`--drain-timeout-ms`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the frontend listens. `grpc` and `metrics` are optional.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// A shutdown signal that many servers can wait on.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves (in a background task) when `shutdown` does.
    pub fn on(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// A future that resolves once the signal has come (at once if it already has).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Runs `server` (handed the [`Stop`] it must shut down on) until it ends, or until `drain`
/// after the shutdown signal, whichever is first. A server cut off by the deadline is dropped
/// (which cancels what it still runs) and `Ok` is returned.
///
/// Errors: the server's own error.
pub async fn drain_within<F>(
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    server: impl FnOnce(Stop) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let stop = Stop::on(shutdown);
    let deadline = {
        let stopped = stop.wait();
        async move {
            stopped.await;
            tokio::time::sleep(drain).await;
        }
    };
    let server = server(stop);
    tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!("drain deadline of {} ms passed; stopping with requests still open", drain.as_millis());
            Ok(())
        }
    }
}

/// [`serve_all_draining`] with the [`DEFAULT_DRAIN_TIMEOUT`].
///
/// Errors: the first interface that fails (the others are then stopped too).
pub async fn serve_all(serving: Shared, listeners: Listeners, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    serve_all_draining(serving, listeners, shutdown, DEFAULT_DRAIN_TIMEOUT).await
}

/// Serves every listener until `shutdown` resolves, then drains in-flight requests for at
/// most `drain` (see the module docs).
///
/// Errors: the first interface that fails (the others are then stopped too).
pub async fn serve_all_draining(
    serving: Shared,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let s = serving.clone();
    let result = drain_within(shutdown, drain, |stop| async move {
        let closer = {
            let (s, stopped) = (serving.clone(), stop.wait());
            tokio::spawn(async move {
                stopped.await;
                s.admission.close();
                tracing::info!(in_flight = s.admission.in_flight(), "shutting down: draining in-flight requests");
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let http = crate::server::http::serve_shared(listeners.http, serving.clone(), stop.wait());
        tasks.spawn(async move { Ok::<_, anyhow::Error>(http.await?) });
        if let Some(l) = listeners.grpc {
            tasks.spawn(crate::server::grpc::serve_grpc(l, serving.clone(), stop.wait()));
        }
        if let Some(l) = listeners.metrics {
            let app = crate::server::http::metrics_router(serving.clone());
            // Same accept loop as the HTTP port: slow or silent clients are cut off.
            let tls = serving.options.tls.as_ref().map(|t| t.server_config()).transpose()?;
            let gate = crate::server::conn::Gate::new("metrics", serving.options.conn);
            let fut = crate::server::http::serve_router(l, app, serving.options.header_read_timeout, tls, gate, stop.wait());
            tasks.spawn(async move { Ok(fut.await?) });
        }
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
                tasks.abort_all();
                result = Err(e);
                break;
            }
        }
        closer.abort();
        result
    })
    .await;
    let left = s.admission.in_flight();
    if left > 0 {
        tracing::warn!("{left} queries were still in flight at shutdown");
    }
    result
}
