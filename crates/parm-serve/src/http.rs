//! The frontend's client interface: Open Inference Protocol (KServe v2) over HTTP/JSON.
//!
//! Endpoints (PROTOCOL.md): `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`,
//! `GET /v2/models/{name}[/versions/{v}]`, `GET /v2/models/{name}[/versions/{v}]/ready`,
//! `POST /v2/models/{name}[/versions/{v}]/infer`. Errors are `{"error": "..."}` with Triton's
//! status mapping: invalid argument 400, not found 404, unavailable 503.
//!
//! A request may carry a batch: input shape `[B, ...input_shape]` (or any shape whose element
//! count is a multiple of the query size). Each of the B rows is one query and joins a coding
//! group on its own. The response's `parameters` say whether any row was reconstructed
//! (`parm_reconstructed`), and, per row, `parm_reconstructed_rows`, `parm_coding_groups`,
//! `parm_group_positions`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::frontend::{Frontend, FrontendError, Prediction};

/// The HTTP router for `frontend`.
pub fn router(frontend: Frontend) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .with_state(frontend)
}

/// An OIP error response.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

async fn server_ready(State(f): State<Frontend>) -> Response {
    let ready = f.ready().await;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": ready}))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "parm", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

fn check_model(f: &Frontend, name: &str, version: Option<&str>) -> Result<(), ApiError> {
    let spec = f.spec();
    if name != spec.name || version.is_some_and(|v| v != spec.version) {
        let v = version.map(|v| format!(" version {v}")).unwrap_or_default();
        return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown model '{name}'{v}")));
    }
    Ok(())
}

fn metadata(f: &Frontend, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    check_model(f, name, version)?;
    let s = f.spec();
    let with_batch = |shape: &[i64]| std::iter::once(-1).chain(shape.iter().copied()).collect::<Vec<_>>();
    Ok(Json(json!({
        "name": s.name, "versions": [s.version], "platform": s.platform,
        "inputs": [{"name": s.input_name, "datatype": s.datatype, "shape": with_batch(&s.input_shape)}],
        "outputs": [{"name": s.output_name, "datatype": s.datatype, "shape": with_batch(&s.output_shape)}],
    })))
}

async fn model_metadata(State(f): State<Frontend>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    metadata(&f, &name, None)
}

async fn model_metadata_v(
    State(f): State<Frontend>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&f, &name, Some(&version))
}

async fn ready_response(f: &Frontend, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    check_model(f, name, version)?;
    let ready = f.ready().await;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((code, Json(json!({"name": name, "ready": ready}))).into_response())
}

async fn model_ready(State(f): State<Frontend>, Path(name): Path<String>) -> Result<Response, ApiError> {
    ready_response(&f, &name, None).await
}

async fn model_ready_v(
    State(f): State<Frontend>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ready_response(&f, &name, Some(&version)).await
}

async fn infer(State(f): State<Frontend>, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    infer_inner(f, name, None, body).await
}

async fn infer_v(
    State(f): State<Frontend>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    infer_inner(f, name, Some(version), body).await
}

async fn infer_inner(f: Frontend, name: String, version: Option<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    check_model(&f, &name, version.as_deref())?;
    let req: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("request body is not valid JSON: {e}")))?;
    let id = match req.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("'id' must be a string")),
    };
    let (rows, batch) = parse_input(&f, &req)?;
    let calls = rows.into_iter().map(|row| f.predict(row));
    let results = futures::future::join_all(calls).await;
    let preds = results.into_iter().collect::<Result<Vec<Prediction>, _>>().map_err(|e| match e {
        FrontendError::InvalidArgument(m) => bad(m),
        FrontendError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
    })?;
    let spec = f.spec();
    let data: Vec<f32> = preds.iter().flat_map(|p| p.output.iter().copied()).collect();
    let mut shape = vec![batch as i64];
    shape.extend(&spec.output_shape);
    let mut resp = json!({
        "model_name": spec.name,
        "model_version": spec.version,
        "parameters": {
            "parm_reconstructed": preds.iter().any(|p| p.reconstructed),
            "parm_reconstructed_rows": preds.iter().map(|p| p.reconstructed).collect::<Vec<_>>(),
            "parm_coding_groups": preds.iter().map(|p| p.group).collect::<Vec<_>>(),
            "parm_group_positions": preds.iter().map(|p| p.position).collect::<Vec<_>>(),
        },
        "outputs": [{"name": spec.output_name, "shape": shape, "datatype": "FP32", "data": data}],
    });
    if let Some(id) = id {
        resp["id"] = Value::String(id);
    }
    Ok(Json(resp))
}

/// Validates the single input tensor and splits it into per-query rows.
fn parse_input(f: &Frontend, req: &Value) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let spec = f.spec();
    let inputs = req.get("inputs").and_then(Value::as_array).ok_or_else(|| bad("'inputs' must be an array"))?;
    let [input] = inputs.as_slice() else {
        return Err(bad(format!("model '{}' takes exactly 1 input, got {}", spec.name, inputs.len())));
    };
    let name = input.get("name").and_then(Value::as_str).ok_or_else(|| bad("input 'name' must be a string"))?;
    if name != spec.input_name {
        return Err(bad(format!("unknown input '{name}', expected '{}'", spec.input_name)));
    }
    let datatype = input.get("datatype").and_then(Value::as_str).ok_or_else(|| bad("input 'datatype' must be a string"))?;
    if !matches!(datatype, "FP32" | "FP64" | "FP16" | "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64") {
        return Err(bad(format!("input '{name}': datatype {datatype} is not supported, expected FP32 (or another numeric type)")));
    }
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("input 'shape' must be an array"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("input 'shape' must hold non-negative integers"))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("input 'shape' overflows"))?;
    let mut data = Vec::with_capacity(count.min(1 << 24));
    flatten(input.get("data").ok_or_else(|| bad("input 'data' is missing"))?, &mut data, count)?;
    if data.len() != count {
        return Err(bad(format!("input '{name}': shape {shape:?} needs {count} values, data has {}", data.len())));
    }
    let per_query = spec.input_len();
    if count == 0 || count % per_query != 0 {
        return Err(bad(format!(
            "input '{name}': {count} values is not a whole number of queries of shape {:?} ({per_query} values each)",
            spec.input_shape
        )));
    }
    if let Some(v) = data.iter().find(|v| !v.is_finite()) {
        return Err(bad(format!("input '{name}': value {v} is not finite")));
    }
    let rows: Vec<Vec<f32>> = data.chunks(per_query).map(<[f32]>::to_vec).collect();
    let batch = rows.len();
    Ok((rows, batch))
}

/// Flattens nested JSON arrays of numbers, row-major; stops early past `limit` values.
fn flatten(v: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => {
            for item in items {
                if out.len() > limit {
                    return Ok(());
                }
                flatten(item, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| bad("input 'data' holds a number out of range"))? as f32);
            Ok(())
        }
        _ => Err(bad("input 'data' must hold only numbers (nested or flat arrays)")),
    }
}

/// Serves the frontend's HTTP interface on `listener` until `shutdown` resolves, then drains
/// in-flight requests.
///
/// Errors: the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    frontend: Frontend,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(frontend)).with_graceful_shutdown(shutdown).await
}
