//! The frontend's gRPC interface: `inference.GRPCInferenceService` (KServe v2 plus Triton's
//! `ModelConfig` and `ModelStatistics`) and the standard `grpc.health.v1.Health` service, on
//! one port (Triton's default 8001).
//!
//! Inference takes one input tensor of any numeric datatype (converted to the model's FP32,
//! see [`crate::oip::tensor`]) in `raw_input_contents` or the typed `contents`, and answers with the
//! FP32 output in `raw_output_contents` (as Triton does), plus the parameter
//! `parm_reconstructed`. Deadlines: the request parameter `timeout` (int64, microseconds, as
//! Triton's clients send it) and the `grpc-timeout` header; the earlier one wins and expiry gives
//! `DEADLINE_EXCEEDED`, never a late answer. Errors use Triton's codes (see [`crate::server::api`]).
//!
//! Model calls (`ModelInfer`, `ModelMetadata`, `ModelReady`, `ModelConfig`,
//! `ModelStatistics`) go to the model their `model_name` / `name` names, NOT_FOUND for an
//! unknown one; `ModelStatistics` without a name answers for every model. `RepositoryIndex`
//! (Triton's) lists every model and its state, as `POST /v2/repository/index` does.
//!
//! Health: `grpc.health.v1` reports SERVING for `""` and `inference.GRPCInferenceService`
//! while every model has a healthy deployed instance, NOT_SERVING otherwise (refreshed every
//! [`HEALTH_REFRESH`]).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::oip::grpc::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::oip::grpc::infer_parameter::ParameterChoice;
use crate::oip::grpc::model_infer_response::InferOutputTensor;
use crate::oip::grpc::{self as pb, InferParameter, MAX_MESSAGE_BYTES, encode_f32_le};
use crate::server::api::{ServedModel, Shared};
use crate::server::error::ApiError;
use crate::server::http::EXTENSIONS;

/// How often `grpc.health.v1` statuses are refreshed from instance health.
pub const HEALTH_REFRESH: Duration = Duration::from_millis(500);

/// The gRPC service over a shared [`crate::server::api::Serving`].
pub struct FrontendService {
    serving: Shared,
}

/// Serves `inference.GRPCInferenceService` and `grpc.health.v1.Health` on `listener` until
/// `shutdown` resolves; over TLS when the serving options say so.
///
/// Errors: TLS files that cannot be used, or a transport failure of the server.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    serving: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // At most twice --max-inflight streams open per connection (HTTP/2
    // SETTINGS_MAX_CONCURRENT_STREAMS; unbounded otherwise): past capacity, requests the
    // frontend has not read yet wait at the client instead of as buffered streams here, while a
    // burst past the limit still gets its fast UNAVAILABLE. Measured without it at 40,000 req/s
    // offered to a frontend that serves about 25,000 (bench/efficiency/slo.sh, parm-inproc at
    // 3x): RSS 1.3 GiB and 378,711 requests failed on reset connections. A client that opens
    // more streams before it has read these SETTINGS gets the extra ones reset with
    // REFUSED_STREAM (nothing was processed; safe to retry, as grpc-go and grpc-core do).
    let streams = u32::try_from(serving.admission.limit().saturating_mul(2)).unwrap_or(u32::MAX);
    let mut server = tonic::transport::Server::builder().max_concurrent_streams(Some(streams));
    if let Some(tls) = &serving.options.tls {
        server = server.tls_config(tls.tonic_server()?)?;
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    let refresher = tokio::spawn(refresh_health(reporter, serving.clone()));
    let auth = crate::oip::security::grpc_auth(serving.options.auth.clone());
    let max_request = serving.options.max_body_bytes;
    let incoming = crate::server::conn::incoming(listener, crate::server::conn::Gate::new("grpc", serving.options.conn));
    let service = GrpcInferenceServiceServer::new(FrontendService { serving })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(service, auth);
    let result = server.add_service(health).add_service(service).serve_with_incoming_shutdown(incoming, shutdown).await;
    refresher.abort();
    Ok(result?)
}

async fn refresh_health(reporter: tonic_health::server::HealthReporter, serving: Shared) {
    const NAME: &str = "inference.GRPCInferenceService";
    loop {
        let status = if serving.ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(NAME, status).await;
        tokio::time::sleep(HEALTH_REFRESH).await;
    }
}

fn status(e: ApiError) -> Status {
    e.grpc_status()
}

/// Parses a `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`, gRPC HTTP/2 spec).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The earlier of the `timeout` parameter (µs) and `grpc-timeout`. The header's deadline is
/// brought forward by a fifth, at most 5 ms, so that the answer, DEADLINE_EXCEEDED, leaves
/// before tonic's transport timer (which starts earlier, and ticks in whole milliseconds)
/// cancels the call with CANCELLED.
fn deadline(params: &HashMap<String, InferParameter>, header: Option<Duration>) -> Result<Option<Duration>, ApiError> {
    let param = match params.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => None,
        Some(ParameterChoice::Int64Param(us)) if *us >= 0 => (*us > 0).then(|| Duration::from_micros(*us as u64)),
        Some(_) => return Err(ApiError::bad("parameter 'timeout' must be a non-negative int64 (microseconds)")),
    };
    let header = header.map(|t| t.saturating_sub((t / 5).min(Duration::from_millis(5))));
    Ok([param, header].into_iter().flatten().min())
}

fn param_bool(b: bool) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(b)) }
}

impl FrontendService {
    /// The model `name` (and `version`, empty for any), or NOT_FOUND.
    fn model(&self, name: &str, version: &str) -> Result<&ServedModel, Status> {
        self.serving.model(name, Some(version)).map_err(status)
    }

    fn infer_response(m: &ServedModel, id: String, preds: &[crate::coded::Prediction]) -> pb::ModelInferResponse {
        let spec = m.frontend.spec();
        let data: Vec<f32> = preds.iter().flat_map(|p| p.output.iter().copied()).collect();
        let shape = std::iter::once(preds.len() as i64).chain(spec.output_shape.iter().copied()).collect();
        let output = InferOutputTensor { name: spec.output_name.clone(), datatype: "FP32".into(), shape, ..Default::default() };
        let mut parameters = HashMap::new();
        parameters.insert("parm_reconstructed".to_string(), param_bool(preds.iter().any(|p| p.reconstructed)));
        pb::ModelInferResponse {
            model_name: spec.name.clone(),
            model_version: spec.version.clone(),
            id,
            parameters,
            outputs: vec![output],
            raw_output_contents: vec![encode_f32_le(&data)],
        }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for FrontendService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.serving.ready() }))
    }

    async fn model_ready(&self, req: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let req = req.into_inner();
        let ready = match self.serving.model(&req.name, Some(&req.version)) {
            Ok(m) => self.serving.model_ready(m),
            // A model not served yet is not ready, rather than an error.
            Err(e) if e.kind == crate::server::error::ErrorKind::Unavailable => false,
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "parm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, req: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.model(&req.name, &req.version)?.frontend.spec().grpc_metadata()))
    }

    async fn model_infer(&self, req: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let header = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let req = req.into_inner();
        let m = self.model(&req.model_name, &req.model_version)?;
        let accepted = self.serving.accept(m);
        // Shed before decoding the input, as HTTP does before parsing (see
        // crate::server::admission): past capacity most requests are shed, and decoding
        // theirs took CPU from the admitted ones.
        if self.serving.admission.is_full() {
            return Err(status(accepted.reject(self.serving.admission.shed_now())));
        }
        let spec = m.frontend.spec();
        let parsed = crate::server::request::grpc_check_outputs(spec, &req)
            .and_then(|_| Ok((deadline(&req.parameters, header)?, crate::server::request::grpc_rows(spec, &req)?)));
        let (timeout, rows) = match parsed {
            Ok(p) => p,
            Err(e) => return Err(status(accepted.reject(e))),
        };
        let id = req.id;
        let response = accepted.run(rows, timeout, |preds| Self::infer_response(m, id, preds)).await.map_err(status)?;
        Ok(Response::new(response))
    }

    async fn model_config(&self, req: Request<pb::ModelConfigRequest>) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let req = req.into_inner();
        let m = self.model(&req.name, &req.version)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(Self::model_config_pb(m)) }))
    }

    async fn model_statistics(&self, req: Request<pb::ModelStatisticsRequest>) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let req = req.into_inner();
        let stats = match req.name.is_empty() {
            true => self.serving.stats_json(),
            false => self.model(&req.name, &req.version)?.stats_json(),
        };
        let model_stats = stats["model_stats"].as_array().map(|a| a.iter().map(Self::model_stats_pb).collect()).unwrap_or_default();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, req: Request<pb::RepositoryIndexRequest>) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let index = self.serving.index_json(req.into_inner().ready);
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let entry = |m: &serde_json::Value| pb::repository_index_response::ModelIndex {
            name: s(&m["name"]),
            version: s(&m["version"]),
            state: s(&m["state"]),
            reason: s(&m["reason"]),
        };
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: index.as_array().map(|a| a.iter().map(entry).collect()).unwrap_or_default(),
        }))
    }
}

impl FrontendService {
    /// The protobuf form of [`ServedModel::config_json`].
    fn model_config_pb(m: &ServedModel) -> pb::ModelConfig {
        let s = m.frontend.spec();
        let json = m.config_json();
        let parameters = json["parameters"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (k.clone(), pb::ModelParameter { string_value: v["string_value"].as_str().unwrap_or_default().to_string() })
                    })
                    .collect()
            })
            .unwrap_or_default();
        pb::ModelConfig {
            name: s.name.clone(),
            platform: s.platform.clone(),
            backend: "parm".into(),
            max_batch_size: crate::server::api::MAX_BATCH_SIZE as i32,
            input: vec![pb::ModelInput {
                name: s.input_name.clone(),
                data_type: pb::DataType::TypeFp32 as i32,
                format: pb::model_input::Format::None as i32,
                dims: s.input_shape.clone(),
            }],
            output: vec![pb::ModelOutput {
                name: s.output_name.clone(),
                data_type: pb::DataType::TypeFp32 as i32,
                dims: s.output_shape.clone(),
            }],
            parameters,
        }
    }

    /// The protobuf form of one entry of [`ServedModel::stats_json`]'s `model_stats`.
    fn model_stats_pb(j: &serde_json::Value) -> pb::ModelStatistics {
        let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let d =
            |k: &str| Some(pb::StatisticDuration { count: u(&j["inference_stats"][k]["count"]), ns: u(&j["inference_stats"][k]["ns"]) });
        pb::ModelStatistics {
            name: j["name"].as_str().unwrap_or_default().into(),
            version: j["version"].as_str().unwrap_or_default().into(),
            last_inference: u(&j["last_inference"]),
            inference_count: u(&j["inference_count"]),
            execution_count: u(&j["execution_count"]),
            inference_stats: Some(pb::InferStatistics {
                success: d("success"),
                fail: d("fail"),
                queue: d("queue"),
                compute_input: d("compute_input"),
                compute_infer: d("compute_infer"),
                compute_output: d("compute_output"),
            }),
            batch_stats: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn earlier_deadline_wins() {
        let mut p = HashMap::new();
        assert_eq!(deadline(&p, None), Ok(None));
        p.insert("timeout".into(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(5_000)) });
        assert_eq!(deadline(&p, None), Ok(Some(Duration::from_millis(5))));
        assert_eq!(deadline(&p, Some(Duration::from_secs(1))), Ok(Some(Duration::from_millis(5))));
        assert_eq!(deadline(&p, Some(Duration::from_millis(2))), Ok(Some(Duration::from_micros(1600))));
        p.insert("timeout".into(), InferParameter { parameter_choice: Some(ParameterChoice::StringParam("x".into())) });
        assert!(deadline(&p, None).is_err());
    }
}
