//! Runs the frontend's interfaces together: OIP HTTP (with `/metrics`), OIP gRPC with
//! `grpc.health.v1`, and optionally a separate Prometheus port, all over one
//! [`crate::api::Serving`], until one shared shutdown signal.

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::Shared;

/// Where the frontend listens. `grpc` and `metrics` are optional.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// Serves every listener until `shutdown` resolves, then drains in-flight requests.
///
/// Errors: the first interface that fails (the others are then stopped too).
pub async fn serve_all(
    serving: Shared,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let http = crate::http::serve_shared(listeners.http, serving.clone(), stopped());
    tasks.spawn(async move { Ok::<_, anyhow::Error>(http.await?) });
    if let Some(l) = listeners.grpc {
        tasks.spawn(crate::grpc_frontend::serve_grpc(l, serving.clone(), stopped()));
    }
    if let Some(l) = listeners.metrics {
        let app = crate::http::metrics_router(serving.clone());
        let fut = axum::serve(l, app).with_graceful_shutdown(stopped());
        tasks.spawn(async move { Ok(fut.await?) });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done? {
            tasks.abort_all();
            return Err(e);
        }
    }
    Ok(())
}
