//! The frontend's client interface: Open Inference Protocol (KServe v2, as Triton speaks it)
//! over HTTP.
//!
//! Endpoints (PROTOCOL.md): `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`,
//! `GET /v2/models/{name}[/versions/{v}]`, `GET /v2/models/{name}[/versions/{v}]/ready`,
//! `GET /v2/models/{name}[/versions/{v}]/config` (Triton's model configuration),
//! `GET /v2/models[/{name}[/versions/{v}]]/stats` (Triton's statistics),
//! `POST /v2/models/{name}[/versions/{v}]/infer`, `POST /v2/repository/index` (Triton's
//! repository index), and `GET /metrics` (Prometheus). Every model path routes to the model it
//! names (see [`crate::server::api::Serving`]); an unknown model gets 404. Readiness
//! (`/v2/health/ready`) is true while every model is ready. Errors are `{"error": "..."}` with
//! Triton's status mapping (see [`crate::server::api`]).
//!
//! Inference requests may use the **binary tensor data extension**: the JSON header is the
//! first `Inference-Header-Content-Length` bytes of the body, followed by the raw tensors in
//! input order, each announced by its `parameters.binary_data_size` (bytes, little-endian,
//! row-major). Outputs are returned binary when the request asks for it
//! (`outputs[i].parameters.binary_data`, or request-level `parameters.binary_data_output`).
//! Every numeric input datatype is converted to the model's FP32 (see [`crate::oip::tensor`]).
//! Request bodies may be gzip- or deflate-compressed (`Content-Encoding`). The request-level
//! parameter `timeout` (microseconds) is a deadline over the whole request: 504 when it passes.
//!
//! A request may carry a batch: input shape `[B, ...input_shape]` (or any shape whose element
//! count is a multiple of the query size), at most [`crate::server::api::MAX_BATCH_SIZE`] queries. Each
//! row joins a coding group on its own. The response's `parameters` say whether any row was
//! reconstructed (`parm_reconstructed`), and, per row, `parm_reconstructed_rows`,
//! `parm_coding_groups`, `parm_group_positions`.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tower_http::decompression::RequestDecompressionLayer;

use crate::coded::{Frontend, Prediction};
use crate::server::api::{ServedModel, Serving, Shared};
use crate::server::error::ApiError;

/// Header carrying the length of the JSON part of a binary-extension body (bytes).
pub const HEADER_LEN: &str = "inference-header-content-length";

/// Default largest request body, after decompression (bytes); set per server with
/// [`crate::oip::security::ServeOptions::max_body_bytes`].
pub const MAX_BODY_BYTES: usize = crate::oip::security::DEFAULT_MAX_BODY_BYTES;

/// Extensions advertised in server metadata.
pub const EXTENSIONS: [&str; 4] = ["binary_tensor_data", "statistics", "model_configuration", "schedule_policy"];

/// The HTTP router for `serving`.
pub fn router(serving: Shared) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(model_config))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v2/models/{name}/versions/{version}/stats", get(model_stats))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(serving.clone(), shed_when_full))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(serving.clone(), require_auth))
        .with_state(serving)
}

/// Bearer-token check (when a token is configured, see [`crate::oip::security`]): everything but
/// the health probes `/v2/health/live` and `/v2/health/ready` needs `Authorization: Bearer
/// TOKEN`, else 401 with `WWW-Authenticate: Bearer`. Runs before the body is read.
async fn require_auth(State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(token) = &s.options.auth {
        let open = matches!(req.uri().path(), "/v2/health/live" | "/v2/health/ready");
        if !open && !token.check_header(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
            let body = Json(json!({"error": "missing or invalid bearer token (send Authorization: Bearer TOKEN)"}));
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
    }
    next.run(req).await
}

/// Largest body [`shed_when_full`] reads before it answers 503 (bytes), and how long it waits
/// for it.
const SHED_DRAIN_BYTES: usize = 256 * 1024;
const SHED_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Admission control before the request is parsed: while the frontend is full (or shutting
/// down), an inference request is answered 503 + `Retry-After` at once (see
/// [`crate::server::admission`]), after reading a body of at most [`SHED_DRAIN_BYTES`].
async fn shed_when_full(State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && req.uri().path().ends_with("/infer") && s.admission.is_full() {
        let shed = s.admission.shed_now();
        // HTTP/1.1 clients (Python's http.client among them) send the body after the headers:
        // a 503 written before it is read closes the connection under them, and they see a
        // broken pipe instead of the answer. A small body is read first.
        let (parts, body) = req.into_parts();
        let small = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if small.is_some_and(|n| n <= SHED_DRAIN_BYTES) {
            let _ = tokio::time::timeout(SHED_DRAIN_TIME, axum::body::to_bytes(body, SHED_DRAIN_BYTES)).await;
        }
        let req = axum::extract::Request::from_parts(parts, axum::body::Body::empty());
        // Counted in the model's statistics when the path names one.
        let name = req.uri().path().strip_prefix("/v2/models/").and_then(|p| p.split('/').next()).unwrap_or_default();
        let e = match s.model(name, None) {
            Ok(m) => s.accept(m).reject(shed),
            Err(_) => shed,
        };
        return HttpError(e).into_response();
    }
    next.run(req).await
}

/// A router serving only `GET /metrics` (for a separate metrics port, like Triton's 8002).
pub fn metrics_router(serving: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(serving.clone(), require_auth))
        .with_state(serving)
}

/// An OIP error response: status per [`ApiError::http_status`], body `{"error": ...}`.
pub struct HttpError(ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = (self.0.kind == crate::server::error::ErrorKind::Overloaded).then(|| {
            [(header::RETRY_AFTER, crate::server::admission::retry_after_secs(crate::server::admission::DEFAULT_RETRY_AFTER).to_string())]
        });
        (code, retry, Json(json!({"error": self.0.message}))).into_response()
    }
}

type ModelPath = Path<HashMap<String, String>>;

/// The model the path names (`{name}`, `{version}`), or 404.
fn model<'a>(s: &'a Serving, p: &HashMap<String, String>) -> Result<&'a ServedModel, HttpError> {
    let name = p.get("name").map(String::as_str).unwrap_or_default();
    Ok(s.model(name, p.get("version").map(String::as_str))?)
}

fn ready_code(ready: bool) -> StatusCode {
    if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn server_ready(State(s): State<Shared>) -> Response {
    let ready = s.ready();
    (ready_code(ready), Json(json!({"ready": ready}))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "parm", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS}))
}

/// Model metadata; `parameters.preprocess` holds the model config's `[preprocess]` table
/// when it has one.
async fn model_metadata(State(s): State<Shared>, Path(p): ModelPath) -> Result<Json<Value>, HttpError> {
    let m = model(&s, &p)?;
    let spec = m.frontend.spec();
    let with_batch = |shape: &[i64]| std::iter::once(-1).chain(shape.iter().copied()).collect::<Vec<_>>();
    let mut meta = json!({
        "name": spec.name, "versions": [spec.version], "platform": spec.platform,
        "inputs": [{"name": spec.input_name, "datatype": spec.datatype, "shape": with_batch(&spec.input_shape)}],
        "outputs": [{"name": spec.output_name, "datatype": spec.datatype, "shape": with_batch(&spec.output_shape)}],
    });
    if let Some(p) = m.preprocess_json() {
        meta["parameters"] = json!({"preprocess": p});
    }
    Ok(Json(meta))
}

async fn model_ready(State(s): State<Shared>, Path(p): ModelPath) -> Result<Response, HttpError> {
    let ready = match model(&s, &p) {
        Ok(m) => s.model_ready(m),
        // A model not served yet is not ready, rather than an error.
        Err(HttpError(e)) if e.kind == crate::server::error::ErrorKind::Unavailable => false,
        Err(e) => return Err(e),
    };
    Ok((ready_code(ready), Json(json!({"name": p["name"], "ready": ready}))).into_response())
}

async fn model_config(State(s): State<Shared>, Path(p): ModelPath) -> Result<Json<Value>, HttpError> {
    Ok(Json(model(&s, &p)?.config_json()))
}

async fn model_stats(State(s): State<Shared>, Path(p): ModelPath) -> Result<Json<Value>, HttpError> {
    Ok(Json(model(&s, &p)?.stats_json()))
}

/// Triton's `POST /v2/repository/index`: `[{"name", "version", "state", "reason"}]` for every
/// model; a body `{"ready": true}` lists the ready ones only.
async fn repository_index(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, HttpError> {
    let ready_only = match body.iter().all(u8::is_ascii_whitespace) {
        true => false,
        false => {
            let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
            match v.get("ready") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::bad("'ready' must be a boolean").into()),
            }
        }
    };
    Ok(Json(s.index_json(ready_only)))
}

async fn all_stats(State(s): State<Shared>) -> Json<Value> {
    Json(s.stats_json())
}

async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.render_metrics()).into_response()
}

async fn infer(State(s): State<Shared>, Path(p): ModelPath, headers: HeaderMap, body: Body) -> Response {
    let m = match model(&s, &p) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let accepted = s.accept(m);
    let body = match read_body(&s.options, &headers, body).await {
        Ok(b) => b,
        Err((code, e)) => {
            let e = accepted.reject(e);
            // The rest of the body is left unread, so the connection is closed after this
            // answer (RFC 9110 §15.5.14); saying so keeps clients from reusing it meanwhile.
            // (hyper drops the header on HTTP/2, where it has no meaning.)
            let close = matches!(code, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT);
            let mut r = (code, Json(json!({"error": e.message}))).into_response();
            if close {
                r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            return r;
        }
    };
    let req = match crate::server::request::parse_http(m.frontend.spec(), headers.get(HEADER_LEN).map(|v| v.as_bytes()), &body) {
        Ok(req) => req,
        Err(e) => return HttpError(accepted.reject(e)).into_response(),
    };
    let (id, binary) = (req.id, req.binary_output);
    match accepted.run(req.rows, req.timeout, |preds| respond(m, id, binary, preds)).await {
        Ok(r) => r,
        Err(e) => HttpError(e).into_response(),
    }
}

/// Reads the (decompressed) request body: at most `max_body_bytes` (else 413, also for a
/// `Content-Length` announcing more, and for a compressed body inflating past it: a gzip bomb
/// stops there), within `body_read_timeout` (else 408); a body that cannot be read or
/// decompressed gets 400.
async fn read_body(o: &crate::oip::security::ServeOptions, headers: &HeaderMap, body: Body) -> Result<Bytes, (StatusCode, ApiError)> {
    use http_body_util::BodyExt;
    let limit = o.max_body_bytes;
    let too_big = || (StatusCode::PAYLOAD_TOO_LARGE, ApiError::bad(format!("request body exceeds the limit of {limit} bytes")));
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let compressed = headers.contains_key(header::CONTENT_ENCODING);
    if !compressed && announced.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let collect = async {
        let mut body = body;
        // Reserve for what is announced, but not much before it arrives: a client announcing
        // a large body and sending nothing must not make the server hold that memory.
        let mut buf = Vec::with_capacity(announced.map_or(0, |n| n as usize).min(limit).min(1 << 20));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, ApiError::bad(format!("reading the request body failed: {e}"))))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_big());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(o.body_read_timeout, collect).await {
        Ok(r) => r,
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            ApiError::bad(format!("request body not received within {} ms", o.body_read_timeout.as_millis())),
        )),
    }
}

/// The OIP response: JSON, or JSON header + binary output when asked for.
fn respond(s: &ServedModel, id: Option<String>, binary: bool, preds: &[Prediction]) -> Response {
    let spec = s.frontend.spec();
    let data: Vec<f32> = preds.iter().flat_map(|p| p.output.iter().copied()).collect();
    let mut shape = vec![preds.len() as i64];
    shape.extend(&spec.output_shape);
    let mut output = json!({"name": spec.output_name, "shape": shape, "datatype": "FP32"});
    if binary {
        output["parameters"] = json!({"binary_data_size": data.len() * 4});
    } else {
        output["data"] = json!(data);
    }
    let mut resp = json!({
        "model_name": spec.name,
        "model_version": spec.version,
        "parameters": {
            "parm_reconstructed": preds.iter().any(|p| p.reconstructed),
            "parm_reconstructed_rows": preds.iter().map(|p| p.reconstructed).collect::<Vec<_>>(),
            "parm_coding_groups": preds.iter().map(|p| p.group).collect::<Vec<_>>(),
            "parm_group_positions": preds.iter().map(|p| p.position).collect::<Vec<_>>(),
        },
        "outputs": [output],
    });
    if let Some(id) = id {
        resp["id"] = Value::String(id);
    }
    if !binary {
        return Json(resp).into_response();
    }
    let mut body = serde_json::to_vec(&resp).expect("JSON serialises");
    let header_len = body.len();
    body.extend(crate::oip::grpc::encode_f32_le(&data));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::HeaderName::from_static(HEADER_LEN), header_len.to_string()),
    ];
    (headers, Body::from(body)).into_response()
}

/// Serves the frontend's HTTP interface on `listener` until `shutdown` resolves, then drains
/// in-flight requests.
///
/// Errors: an unparsable instance address, or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    frontend: Frontend,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let serving = Serving::start(frontend, Default::default()).await?;
    serve_shared(listener, serving, shutdown).await?;
    Ok(())
}

/// [`serve`] for a [`Serving`] shared with other interfaces (gRPC, a metrics port).
///
/// Errors: the listener fails.
pub async fn serve_shared(
    listener: tokio::net::TcpListener,
    serving: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_read_timeout = serving.options.header_read_timeout;
    let tls = serving.options.tls.as_ref().map(|t| t.server_config()).transpose().map_err(std::io::Error::other)?;
    let gate = crate::server::conn::Gate::new("http", serving.options.conn);
    serve_router(listener, router(serving), header_read_timeout, tls, gate, shutdown).await
}

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2, TCP_NODELAY) until `shutdown` resolves,
/// then stops accepting and waits for open connections to finish their requests.
///
/// A client that has not sent a request's headers within `header_read_timeout` of starting
/// it (or of opening the connection) is disconnected, so stalled or trickling clients cannot
/// hold connections open forever (hyper's `header_read_timeout`, which `axum::serve` leaves
/// without a timer, i.e. off). Bodies are bounded in time by the handlers (see
/// [`crate::oip::security::ServeOptions::body_read_timeout`]).
///
/// With `tls`, every connection is TLS (HTTPS; HTTP/2 by ALPN); the handshake must finish
/// within `header_read_timeout` too, and a failed one closes the connection. `gate` bounds
/// the open connections and closes idle ones ([`crate::server::conn`]).
///
/// Errors: the listener fails.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: std::time::Duration,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    gate: crate::server::conn::Gate,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off and keep serving (as
                // axum::serve does); the errors that end a listener are not recoverable.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Some(stream) = gate.admit(stream) else { continue };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte: a connection that sends
            // nothing at all is closed here after the same timeout.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_read_timeout, stream.get_ref().peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let result = match tls {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service)).await,
                Some(acceptor) => match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service)).await,
                    Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                },
            };
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
