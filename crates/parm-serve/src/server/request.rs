//! Parsing and validation of Open Inference Protocol inference requests into per-query FP32
//! rows, for both client interfaces: HTTP bodies (JSON, or JSON header + binary tensors, see
//! [`crate::server::http`]) and gRPC `ModelInferRequest`s (see [`crate::server::grpc`]).
//!
//! These functions are pure (they need only the served model's [`ModelSpec`]), so the fuzz
//! targets in `fuzz/` drive exactly the code the servers run. Every failure is an
//! invalid-argument [`ApiError`] (400 / `INVALID_ARGUMENT`) with a message naming the problem;
//! no input makes them panic or allocate much beyond the input's own size.
//!
//! Values must be finite: NaN and infinities are rejected (400). A classifier has no meaningful
//! answer for them, and letting one through would poison the parity query of every other
//! query in its coding group (the parity query is their sum).

use serde_json::Value;

use crate::oip::ModelSpec;
use crate::oip::grpc::{self as pb, infer_parameter::ParameterChoice, model_infer_request::InferInputTensor};
use crate::oip::tensor::{DataType, decode_binary, json_number_to_f32};
use crate::server::api::{MAX_BATCH_SIZE, timeout_param};
use crate::server::error::ApiError;

/// A validated HTTP inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpInfer {
    pub id: Option<String>,
    /// One row of `spec.input_len()` values per query.
    pub rows: Vec<Vec<f32>>,
    /// Request-level `parameters.timeout` (microseconds on the wire).
    pub timeout: Option<std::time::Duration>,
    /// Whether the output goes back as a binary tensor.
    pub binary_output: bool,
}

/// Parses an HTTP inference body. `header_len` is the `Inference-Header-Content-Length`
/// header's value, if any (the binary tensor extension): the JSON header is then the first
/// that many bytes of `body` and the tensor bytes follow.
///
/// Errors: invalid argument, for any malformed or inconsistent request.
pub fn parse_http(spec: &ModelSpec, header_len: Option<&[u8]>, body: &[u8]) -> Result<HttpInfer, ApiError> {
    let (json_part, binary) = split_body(header_len, body)?;
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
    if params.is_some_and(|p| !p.is_object() && !p.is_null()) {
        return Err(ApiError::bad("'parameters' must be an object"));
    }
    let timeout = timeout_param(params.and_then(|p| p.get("timeout")))?;
    let binary_output = wants_binary_output(spec, &req)?;
    let rows = http_input(spec, &req, binary)?;
    Ok(HttpInfer { id, rows, timeout, binary_output })
}

/// (JSON header, binary tail) of the body.
fn split_body<'a>(header_len: Option<&[u8]>, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(v) = header_len else { return Ok((body, &[])) };
    let n: usize = std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad("Inference-Header-Content-Length must be a non-negative integer"))?;
    if n > body.len() {
        return Err(ApiError::bad(format!("Inference-Header-Content-Length {n} exceeds the body's {} bytes", body.len())));
    }
    Ok(body.split_at(n))
}

/// Whether outputs go binary; checks requested output names.
fn wants_binary_output(spec: &ModelSpec, req: &Value) -> Result<bool, ApiError> {
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
fn http_input(spec: &ModelSpec, req: &Value, binary: &[u8]) -> Result<Vec<Vec<f32>>, ApiError> {
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
    let count = shape_count(spec, name, &shape)?;
    let values = match input.get("parameters").and_then(|p| p.get("binary_data_size")) {
        Some(size) => binary_values(name, dtype, size, binary, count)?,
        None if !binary.is_empty() => {
            return Err(ApiError::bad(format!("binary data follows the JSON header but input '{name}' has no 'binary_data_size'")));
        }
        None => json_values(name, dtype, input.get("data"), count)?,
    };
    rows(spec, name, &shape, values)
}

/// The element count of `shape`, checked before any data is decoded: no overflow, a whole
/// number (>= 1) of queries, at most [`MAX_BATCH_SIZE`] of them. Checking first keeps a small
/// request from announcing a huge tensor and making the server allocate for it.
fn shape_count(spec: &ModelSpec, input: &str, shape: &[usize]) -> Result<usize, ApiError> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| ApiError::bad(format!("input '{input}': shape {shape:?} overflows")))?;
    let per_query = spec.input_len().max(1);
    if count == 0 || count % per_query != 0 {
        return Err(ApiError::bad(format!(
            "input '{input}': shape {shape:?} ({count} values) is not a whole number (>= 1) of queries of shape {:?} ({per_query} values each)",
            spec.input_shape
        )));
    }
    if count / per_query > MAX_BATCH_SIZE {
        return Err(ApiError::bad(format!(
            "input '{input}': batch of {} queries exceeds max_batch_size {MAX_BATCH_SIZE}",
            count / per_query
        )));
    }
    Ok(count)
}

fn binary_values(name: &str, dtype: DataType, size: &Value, binary: &[u8], count: usize) -> Result<Vec<f32>, ApiError> {
    let size = size
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ApiError::bad(format!("input '{name}': 'binary_data_size' must be a non-negative integer")))?;
    if size != binary.len() {
        return Err(ApiError::bad(format!("input '{name}': binary_data_size {size} but {} bytes follow the JSON header", binary.len())));
    }
    decode_binary(dtype, binary, count, name).map_err(ApiError::bad)
}

fn json_values(name: &str, dtype: DataType, data: Option<&Value>, count: usize) -> Result<Vec<f32>, ApiError> {
    let data = data.ok_or_else(|| ApiError::bad(format!("input '{name}': 'data' is missing (and no 'binary_data_size' given)")))?;
    let mut out = Vec::with_capacity(count.min(1 << 16));
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

/// Splits `values` (shape `shape`) into per-query rows of the model's input length.
///
/// Errors: element count not matching the shape, not a whole number (>= 1) of queries,
/// more than [`MAX_BATCH_SIZE`] queries, or a value that is not finite (NaN, ±infinity).
pub fn rows(spec: &ModelSpec, input: &str, shape: &[usize], values: Vec<f32>) -> Result<Vec<Vec<f32>>, ApiError> {
    let count = shape_count(spec, input, shape)?;
    if values.len() != count {
        return Err(ApiError::bad(format!("input '{input}': shape {shape:?} needs {count} values, data has {}", values.len())));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(ApiError::bad(format!("input '{input}': value {v} is not finite (NaN and infinities are rejected)")));
    }
    let row = spec.input_len().max(1);
    if values.len() == row {
        return Ok(vec![values]); // one query: no copy
    }
    Ok(values.chunks(row).map(<[f32]>::to_vec).collect())
}

/// Validates a gRPC request's single input tensor and decodes it to FP32 rows (raw or typed
/// contents; every numeric datatype is converted, see [`crate::oip::tensor`]).
///
/// Errors: invalid argument, for any malformed or inconsistent request.
pub fn grpc_rows(spec: &ModelSpec, req: &pb::ModelInferRequest) -> Result<Vec<Vec<f32>>, ApiError> {
    let [tensor] = req.inputs.as_slice() else {
        return Err(ApiError::bad(format!("model '{}' takes exactly 1 input, got {}", spec.name, req.inputs.len())));
    };
    if tensor.name != spec.input_name {
        return Err(ApiError::bad(format!("unknown input '{}', expected '{}'", tensor.name, spec.input_name)));
    }
    let dtype = DataType::parse(&tensor.datatype).map_err(|m| ApiError::bad(format!("input '{}': {m}", tensor.name)))?;
    dtype.check_numeric(&tensor.name).map_err(ApiError::bad)?;
    let shape: Vec<usize> = tensor
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad(format!("input '{}': shape {:?} has a negative dim", tensor.name, tensor.shape)))?;
    let count = shape_count(spec, &tensor.name, &shape)?;
    let values = match req.raw_input_contents.as_slice() {
        [] => typed_values(tensor, dtype)?,
        [raw] => decode_binary(dtype, raw, count, &tensor.name).map_err(ApiError::bad)?,
        more => return Err(ApiError::bad(format!("raw_input_contents has {} entries for 1 input", more.len()))),
    };
    rows(spec, &tensor.name, &shape, values)
}

/// The values of `contents` matching `dtype` (FP16 / BF16 only travel raw).
fn typed_values(t: &InferInputTensor, dtype: DataType) -> Result<Vec<f32>, ApiError> {
    let Some(c) = t.contents.as_ref() else { return Ok(Vec::new()) };
    Ok(match dtype {
        DataType::F32 => c.fp32_contents.clone(),
        DataType::F64 => c.fp64_contents.iter().map(|&v| v as f32).collect(),
        DataType::I8 | DataType::I16 | DataType::I32 => c.int_contents.iter().map(|&v| v as f32).collect(),
        DataType::I64 => c.int64_contents.iter().map(|&v| v as f32).collect(),
        DataType::U8 | DataType::U16 | DataType::U32 => c.uint_contents.iter().map(|&v| v as f32).collect(),
        DataType::U64 => c.uint64_contents.iter().map(|&v| v as f32).collect(),
        _ => return Err(ApiError::bad(format!("input '{}': {} data must be sent in raw_input_contents", t.name, t.datatype))),
    })
}

/// Checks requested outputs: only the model's one output, no classification.
pub fn grpc_check_outputs(spec: &ModelSpec, req: &pb::ModelInferRequest) -> Result<(), ApiError> {
    let want = &spec.output_name;
    for o in &req.outputs {
        if &o.name != want {
            return Err(ApiError::bad(format!("unknown output '{}', expected '{want}'", o.name)));
        }
        if o.parameters.contains_key("classification") {
            return Err(ApiError::bad("the classification extension is not supported"));
        }
    }
    Ok(())
}

/// The `timeout` request parameter (int64 microseconds), if any.
///
/// Errors: a negative value or another type.
pub fn grpc_timeout_param(req: &pb::ModelInferRequest) -> Result<Option<std::time::Duration>, ApiError> {
    match req.parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(us)) if *us >= 0 => Ok((*us > 0).then(|| std::time::Duration::from_micros(*us as u64))),
        Some(_) => Err(ApiError::bad("parameter 'timeout' must be a non-negative int64 (microseconds)")),
    }
}

/// What the gRPC frontend does with a message's bytes before inference: protobuf decoding
/// (as tonic does, with prost), then output, timeout and input checks. For fuzzing.
///
/// Errors: invalid argument for bytes that are not a `ModelInferRequest` or a bad request.
pub fn decode_grpc(spec: &ModelSpec, bytes: &[u8]) -> Result<Vec<Vec<f32>>, ApiError> {
    let req =
        <pb::ModelInferRequest as prost::Message>::decode(bytes).map_err(|e| ApiError::bad(format!("not a ModelInferRequest: {e}")))?;
    grpc_check_outputs(spec, &req)?;
    grpc_timeout_param(&req)?;
    grpc_rows(spec, &req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::fp32("m", vec![4], vec![3])
    }

    #[test]
    fn huge_announced_shapes_are_rejected_before_allocating() {
        let body = br#"{"inputs":[{"name":"input","shape":[1024,4194304],"datatype":"FP32","data":[1]}]}"#;
        let e = parse_http(&spec(), None, body).unwrap_err();
        assert!(e.message.contains("max_batch_size"), "{}", e.message);
        let body = br#"{"inputs":[{"name":"input","shape":[18446744073709551615,2],"datatype":"FP32","data":[1]}]}"#;
        assert!(parse_http(&spec(), None, body).unwrap_err().message.contains("overflows"));
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let mut raw = Vec::new();
        for v in [1.0f32, f32::NAN, 0.0, 2.0] {
            raw.extend(v.to_le_bytes());
        }
        let header = br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.to_vec();
        body.extend(&raw);
        let len = header.len().to_string();
        let e = parse_http(&spec(), Some(len.as_bytes()), &body).unwrap_err();
        assert!(e.message.contains("not finite"), "{}", e.message);
        // A finite FP64 beyond f32's range becomes infinity: rejected too.
        let body = br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[1e300,0,0,0]}]}"#;
        assert!(parse_http(&spec(), None, body).unwrap_err().message.contains("not finite"));
    }

    #[test]
    fn grpc_bytes_decode() {
        assert!(decode_grpc(&spec(), &[0xff, 0xff, 0xff]).is_err());
        let req = pb::ModelInferRequest {
            inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, 4], ..Default::default() }],
            raw_input_contents: vec![crate::oip::grpc::encode_f32_le(&[1.0, 2.0, 3.0, 4.0])],
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&req);
        assert_eq!(decode_grpc(&spec(), &bytes).unwrap(), vec![vec![1.0, 2.0, 3.0, 4.0]]);
    }
}
