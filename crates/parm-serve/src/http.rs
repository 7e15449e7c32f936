//! The frontend's client interface: Open Inference Protocol (KServe v2, as Triton speaks it)
//! over HTTP.
//!
//! Endpoints (PROTOCOL.md): `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`,
//! `GET /v2/models/{name}[/versions/{v}]`, `GET /v2/models/{name}[/versions/{v}]/ready`,
//! `GET /v2/models/{name}[/versions/{v}]/config` (Triton's model configuration),
//! `GET /v2/models[/{name}[/versions/{v}]]/stats` (Triton's statistics),
//! `POST /v2/models/{name}[/versions/{v}]/infer`, and `GET /metrics` (Prometheus).
//! Errors are `{"error": "..."}` with Triton's status mapping (see [`crate::api`]).
//!
//! Inference requests may use the **binary tensor data extension**: the JSON header is the
//! first `Inference-Header-Content-Length` bytes of the body, followed by the raw tensors in
//! input order, each announced by its `parameters.binary_data_size` (bytes, little-endian,
//! row-major). Outputs are returned binary when the request asks for it
//! (`outputs[i].parameters.binary_data`, or request-level `parameters.binary_data_output`).
//! Every numeric input datatype is converted to the model's FP32 (see [`crate::tensor`]).
//! Request bodies may be gzip- or deflate-compressed (`Content-Encoding`). The request-level
//! parameter `timeout` (microseconds) is a deadline over the whole request: 504 when it passes.
//!
//! A request may carry a batch: input shape `[B, ...input_shape]` (or any shape whose element
//! count is a multiple of the query size), at most [`crate::api::MAX_BATCH_SIZE`] queries. Each
//! row joins a coding group on its own. The response's `parameters` say whether any row was
//! reconstructed (`parm_reconstructed`), and, per row, `parm_reconstructed_rows`,
//! `parm_coding_groups`, `parm_group_positions`.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::decompression::RequestDecompressionLayer;

use crate::api::{timeout_param, ApiError, Serving, Shared};
use crate::frontend::{Frontend, Prediction};
use crate::tensor::{decode_binary, json_number_to_f32, DataType};

/// Header carrying the length of the JSON part of a binary-extension body (bytes).
pub const HEADER_LEN: &str = "inference-header-content-length";

/// Largest request body accepted, after decompression (bytes).
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

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
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(serving.clone(), shed_when_full))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestDecompressionLayer::new())
        .with_state(serving)
}

/// Admission control before the body is read: while the frontend is full (or shutting down),
/// an inference request is answered 503 + `Retry-After` at once (see [`crate::admission`]).
async fn shed_when_full(State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && req.uri().path().ends_with("/infer") && s.admission.is_full() {
        let accepted = s.accept();
        return HttpError(accepted.reject(s.admission.shed_now())).into_response();
    }
    next.run(req).await
}

/// A router serving only `GET /metrics` (for a separate metrics port, like Triton's 8002).
pub fn metrics_router(serving: Shared) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(serving)
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
        let retry = (self.0.kind == crate::api::ErrorKind::Overloaded)
            .then(|| [(header::RETRY_AFTER, crate::admission::retry_after_secs(crate::admission::DEFAULT_RETRY_AFTER).to_string())]);
        (code, retry, Json(json!({"error": self.0.message}))).into_response()
    }
}

type Model = Path<HashMap<String, String>>;

fn check(s: &Serving, p: &HashMap<String, String>) -> Result<(), HttpError> {
    let name = p.get("name").map(String::as_str).unwrap_or_default();
    Ok(s.check_model(name, p.get("version").map(String::as_str))?)
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

async fn model_metadata(State(s): State<Shared>, Path(p): Model) -> Result<Json<Value>, HttpError> {
    check(&s, &p)?;
    let spec = s.frontend.spec();
    let with_batch = |shape: &[i64]| std::iter::once(-1).chain(shape.iter().copied()).collect::<Vec<_>>();
    Ok(Json(json!({
        "name": spec.name, "versions": [spec.version], "platform": spec.platform,
        "inputs": [{"name": spec.input_name, "datatype": spec.datatype, "shape": with_batch(&spec.input_shape)}],
        "outputs": [{"name": spec.output_name, "datatype": spec.datatype, "shape": with_batch(&spec.output_shape)}],
    })))
}

async fn model_ready(State(s): State<Shared>, Path(p): Model) -> Result<Response, HttpError> {
    check(&s, &p)?;
    let ready = s.ready();
    Ok((ready_code(ready), Json(json!({"name": p["name"], "ready": ready}))).into_response())
}

async fn model_config(State(s): State<Shared>, Path(p): Model) -> Result<Json<Value>, HttpError> {
    check(&s, &p)?;
    Ok(Json(s.config_json()))
}

async fn model_stats(State(s): State<Shared>, Path(p): Model) -> Result<Json<Value>, HttpError> {
    check(&s, &p)?;
    Ok(Json(s.stats_json()))
}

async fn all_stats(State(s): State<Shared>) -> Json<Value> {
    Json(s.stats_json())
}

async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.render_metrics()).into_response()
}

async fn infer(State(s): State<Shared>, Path(p): Model, headers: HeaderMap, body: Bytes) -> Response {
    let accepted = s.accept();
    let parsed = check(&s, &p).map_err(|e| e.0).and_then(|_| parse_request(&s, &headers, &body));
    let req = match parsed {
        Ok(req) => req,
        Err(e) => return HttpError(accepted.reject(e)).into_response(),
    };
    match accepted.run(req.rows, req.timeout).await {
        Ok(preds) => respond(&s, req.id, req.binary_output, &preds),
        Err(e) => HttpError(e).into_response(),
    }
}

/// A validated inference request.
struct InferRequest {
    id: Option<String>,
    rows: Vec<Vec<f32>>,
    timeout: Option<std::time::Duration>,
    binary_output: bool,
}

/// Splits the body per the binary extension, validates the JSON header and decodes the input.
fn parse_request(s: &Serving, headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, ApiError> {
    let (json_part, binary) = split_body(headers, body)?;
    let req: Value = serde_json::from_slice(json_part).map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    if !req.is_object() {
        return Err(ApiError::bad("request body must be a JSON object"));
    }
    let id = match req.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("'id' must be a string")),
    };
    let params = req.get("parameters");
    let timeout = timeout_param(params.and_then(|p| p.get("timeout")))?;
    let binary_output = wants_binary_output(s, &req)?;
    let rows = parse_input(s, &req, binary)?;
    Ok(InferRequest { id, rows, timeout, binary_output })
}

/// (JSON header, binary tail) of the body.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(v) = headers.get(HEADER_LEN) else { return Ok((body, &[])) };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad("Inference-Header-Content-Length must be a non-negative integer"))?;
    if n > body.len() {
        return Err(ApiError::bad(format!("Inference-Header-Content-Length {n} exceeds the body's {} bytes", body.len())));
    }
    Ok(body.split_at(n))
}

/// Whether outputs go binary; checks requested output names.
fn wants_binary_output(s: &Serving, req: &Value) -> Result<bool, ApiError> {
    let spec = s.frontend.spec();
    let mut binary = param_bool(req.get("parameters"), "binary_data_output")?;
    let Some(outputs) = req.get("outputs").filter(|o| !o.is_null()) else { return Ok(binary) };
    let outputs = outputs.as_array().ok_or_else(|| ApiError::bad("'outputs' must be an array"))?;
    for o in outputs {
        let name = o.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::bad("output 'name' must be a string"))?;
        if name != spec.output_name {
            return Err(ApiError::bad(format!("unknown output '{name}', expected '{}'", spec.output_name)));
        }
        if o.get("parameters").and_then(|p| p.get("classification")).is_some() {
            return Err(ApiError::bad("the classification extension is not supported"));
        }
        if o.get("parameters").and_then(|p| p.get("binary_data")).is_some() {
            binary = param_bool(o.get("parameters"), "binary_data")?;
        }
    }
    Ok(binary)
}

fn param_bool(params: Option<&Value>, key: &str) -> Result<bool, ApiError> {
    match params.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad(format!("parameter '{key}' must be a boolean"))),
    }
}

/// Validates the single input tensor (JSON or binary data) and splits it into per-query rows.
fn parse_input(s: &Serving, req: &Value, binary: &[u8]) -> Result<Vec<Vec<f32>>, ApiError> {
    let spec = s.frontend.spec();
    let inputs = req.get("inputs").and_then(Value::as_array).ok_or_else(|| ApiError::bad("'inputs' must be an array"))?;
    let [input] = inputs.as_slice() else {
        return Err(ApiError::bad(format!("model '{}' takes exactly 1 input, got {}", spec.name, inputs.len())));
    };
    let name = input.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::bad("input 'name' must be a string"))?;
    if name != spec.input_name {
        return Err(ApiError::bad(format!("unknown input '{name}', expected '{}'", spec.input_name)));
    }
    let dt = input.get("datatype").and_then(Value::as_str).ok_or_else(|| ApiError::bad("input 'datatype' must be a string"))?;
    let dtype = DataType::parse(dt).map_err(|m| ApiError::bad(format!("input '{name}': {m}")))?;
    dtype.check_numeric(name).map_err(ApiError::bad)?;
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad("input 'shape' must be an array"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad("input 'shape' must hold non-negative integers"))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| ApiError::bad("input 'shape' overflows"))?;
    let values = match input.get("parameters").and_then(|p| p.get("binary_data_size")) {
        Some(size) => binary_values(name, dtype, size, binary, count)?,
        None if !binary.is_empty() => return Err(ApiError::bad(format!("binary data follows the JSON header but input '{name}' has no 'binary_data_size'"))),
        None => json_values(name, dtype, input.get("data"), count)?,
    };
    s.rows(name, &shape, values)
}

fn binary_values(name: &str, dtype: DataType, size: &Value, binary: &[u8], count: usize) -> Result<Vec<f32>, ApiError> {
    let size = size.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| ApiError::bad(format!("input '{name}': 'binary_data_size' must be a non-negative integer")))?;
    if size != binary.len() {
        return Err(ApiError::bad(format!("input '{name}': binary_data_size {size} but {} bytes follow the JSON header", binary.len())));
    }
    decode_binary(dtype, binary, count, name).map_err(ApiError::bad)
}

fn json_values(name: &str, dtype: DataType, data: Option<&Value>, count: usize) -> Result<Vec<f32>, ApiError> {
    let data = data.ok_or_else(|| ApiError::bad(format!("input '{name}': 'data' is missing (and no 'binary_data_size' given)")))?;
    let mut out = Vec::with_capacity(count.min(1 << 24));
    flatten(data, dtype, name, &mut out, count)?;
    Ok(out)
}

/// Flattens nested JSON arrays of numbers, row-major; stops early past `limit` values.
fn flatten(v: &Value, dtype: DataType, name: &str, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => {
            for item in items {
                if out.len() > limit {
                    return Ok(());
                }
                flatten(item, dtype, name, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            out.push(json_number_to_f32(dtype, n, name).map_err(ApiError::bad)?);
            Ok(())
        }
        _ => Err(ApiError::bad(format!("input '{name}': 'data' must hold only numbers (nested or flat arrays)"))),
    }
}

/// The OIP response: JSON, or JSON header + binary output when asked for.
fn respond(s: &Serving, id: Option<String>, binary: bool, preds: &[Prediction]) -> Response {
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
    body.extend(crate::grpc::encode_f32_le(&data));
    let headers = [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::HeaderName::from_static(HEADER_LEN), header_len.to_string())];
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
    let serving = Serving::start(frontend).await?;
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
    axum::serve(listener, router(serving)).with_graceful_shutdown(shutdown).await
}
