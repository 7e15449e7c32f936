//! Bearer-token authentication end to end over 127.0.0.1: the frontend's HTTP and gRPC client
//! interfaces (401 / UNAUTHENTICATED without the token, health probes open) and the instance
//! interface (workers reject calls without the token; the frontend's instance clients send
//! it).

use crate::support;

use parm_serve::oip::security::{AuthToken, ServeOptions};
use parm_serve::upstream::client::{ClientOptions, InstanceClient, InstanceError};
use serde_json::Value;
use support::{Cluster, IN, cluster, expected, good_body, input, output_of};

const TOKEN: &str = "test-token-0123456789";

fn token() -> AuthToken {
    AuthToken::new(TOKEN).unwrap()
}

/// Frontend and workers both requiring [`TOKEN`].
async fn secured() -> Cluster {
    cluster(ServeOptions { auth: Some(token()), ..Default::default() }, Some(token())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_needs_the_token_except_health_probes() {
    let c = secured().await;
    let http = reqwest::Client::new();
    let infer = format!("{}/v2/models/lin/infer", c.url);
    for auth in [None, Some("Bearer wrong-token"), Some(&format!("Basic {TOKEN}")[..]), Some(TOKEN), Some("Bearer ")] {
        let mut req = http.post(&infer).json(&good_body(1));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("bearer token"), "{v}");
    }
    let r = http.post(&infer).bearer_auth(TOKEN).json(&good_body(2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(output_of(&r.json().await.unwrap()), expected(&input(2)));
    // Health probes are open; everything else is not.
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(http.get(format!("{}{path}", c.url)).send().await.unwrap().status(), 200, "{path}");
    }
    for path in
        ["/v2", "/v2/models/lin", "/v2/models/lin/ready", "/v2/models/lin/config", "/v2/models/lin/stats", "/metrics", "/v2/nothing"]
    {
        assert_eq!(http.get(format!("{}{path}", c.url)).send().await.unwrap().status(), 401, "{path}");
        let r = http.get(format!("{}{path}", c.url)).bearer_auth(TOKEN).send().await.unwrap();
        assert_ne!(r.status(), 401, "{path}");
    }
    // A huge body without the token is refused before it is read.
    let r = http.post(&infer).header("Content-Length", (1u64 << 40).to_string()).body(vec![b' '; 1024]).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_needs_the_token_except_health() {
    use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
    use parm_serve::oip::grpc::model_infer_request::InferInputTensor;
    use parm_serve::oip::grpc::{self as pb};
    use tonic::Code;

    let c = secured().await;
    let mut g = GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap();
    let req = || pb::ModelInferRequest {
        model_name: "lin".into(),
        inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, IN as i64], ..Default::default() }],
        raw_input_contents: vec![parm_serve::oip::grpc::encode_f32_le(&input(1))],
        ..Default::default()
    };
    let err = g.model_infer(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut wrong = tonic::Request::new(req());
    wrong.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(g.model_infer(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(g.server_metadata(pb::ServerMetadataRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
    let mut ok = tonic::Request::new(req());
    ok.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let out = g.model_infer(ok).await.unwrap().into_inner();
    assert_eq!(parm_serve::oip::grpc::decode_f32_le(&out.raw_output_contents[0]).unwrap(), expected(&input(1)));
    // grpc.health.v1 stays open for orchestrators' probes.
    let channel = tonic::transport::Endpoint::from_shared(c.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_need_the_token() {
    let c = secured().await;
    let addr = c.workers[0].addr.to_string();
    let x = input(1);
    for bad in [None, Some(AuthToken::new("other-token").unwrap())] {
        let client = InstanceClient::connect(&addr, &ClientOptions { token: bad.clone(), tls: None }).unwrap();
        let e = client.infer("deployed", &x, &[1, IN as i64], std::time::Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, InstanceError::Other { code: tonic::Code::Unauthenticated, .. }), "{bad:?}: {e:?}");
        assert!(!client.model_ready("deployed", std::time::Duration::from_secs(2)).await);
    }
    let client = InstanceClient::connect(&addr, &ClientOptions { token: Some(token()), tls: None }).unwrap();
    let out = client.infer("deployed", &x, &[1, IN as i64], std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(out, expected(&x));
    // The frontend's own instance clients carry its token: served end to end.
    let r =
        reqwest::Client::new().post(format!("{}/v2/models/lin/infer", c.url)).bearer_auth(TOKEN).json(&good_body(3)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(output_of(&r.json().await.unwrap()), expected(&input(3)));
}

/// The instance token is a frontend's setting, not the process's: two frontends in one
/// process reach two fleets with different tokens, each serving correctly, and a frontend
/// with the wrong token for its fleet answers with an error, never a wrong output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_frontend_sends_its_own_instance_token() {
    let other = AuthToken::new("another-fleet-token").unwrap();
    let (a, b) = (secured().await, cluster(ServeOptions::default(), Some(other.clone())).await);
    let http = reqwest::Client::new();
    let ra = http.post(format!("{}/v2/models/lin/infer", a.url)).bearer_auth(TOKEN).json(&good_body(2)).send().await.unwrap();
    let rb = http.post(format!("{}/v2/models/lin/infer", b.url)).json(&good_body(2)).send().await.unwrap();
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    assert_eq!(output_of(&ra.json().await.unwrap()), expected(&input(2)));
    assert_eq!(output_of(&rb.json().await.unwrap()), expected(&input(2)));

    // A frontend over fleet b's workers sending fleet a's token.
    let deployed = b.workers[..2].iter().map(|w| w.addr.to_string()).collect();
    let spec = parm_serve::oip::ModelSpec::fp32("lin", vec![IN as i64], vec![support::OUT as i64]);
    let upstream = ClientOptions { token: Some(token()), tls: None };
    let cfg = parm_serve::coded::FrontendConfig { upstream, ..parm_serve::coded::FrontendConfig::new(spec, deployed) };
    let wrong = parm_serve::coded::Frontend::start(cfg).unwrap();
    let e = wrong.predict(input(1)).await.expect_err("a refused instance call answered");
    assert!(e.to_string().contains("nauthenticated") || e.to_string().contains("token"), "{e}");
}
