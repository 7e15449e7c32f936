//! TLS end to end, with certificates made by the test (rcgen): a worker demanding client
//! certificates (mutual TLS), a frontend reaching it over TLS with its client certificate, and
//! the frontend's HTTP and gRPC listeners over TLS. Plain-text clients and clients without a
//! certificate are refused. One test in its own binary: the instance clients' TLS setting is
//! process-wide.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::InferenceBackend;
use parm_serve::instance::worker::{WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::oip::grpc as pb;
use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use parm_serve::oip::security::ServeOptions;
use parm_serve::oip::tls::{ClientTls, TlsFiles};
use parm_serve::server::api::{Serving, ServingOptions};
use parm_serve::upstream::client::{ClientOptions, InstanceClient};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA, and certificates it signed for the server (localhost, 127.0.0.1) and a client, as
/// PEM files in `dir`: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans) in [("server", vec!["localhost".to_string(), "127.0.0.1".to_string()]), ("client", vec!["frontend".to_string()])] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// One HTTP/1.1 request over TLS (trusting `ca`); the response's status line and body.
async fn https(addr: &str, ca: &Path, request: &str) -> std::io::Result<(String, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    tls.read_to_string(&mut text).await.or_else(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(0) } else { Err(e) })?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_frontend_and_clients_speak_tls_and_refuse_plain_text() {
    let dir: PathBuf = std::env::temp_dir().join(format!("parm-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let p = |f: &str| dir.join(f);
    let server_files = |client_ca: Option<PathBuf>| TlsFiles { cert: p("server.pem"), key: p("server.key"), client_ca };

    // A worker that only talks to holders of a client certificate from the CA.
    let opts = WorkerOptions { tls: Some(server_files(Some(p("ca.pem")))), ..Default::default() };
    let worker = spawn_worker("127.0.0.1:0", models().0 as Arc<dyn InferenceBackend>, opts).await.unwrap();
    let waddr = worker.addr.to_string();
    let timeout = Duration::from_secs(5);
    let plain = InstanceClient::connect_lazy(&waddr).unwrap();
    assert!(!plain.model_ready("deployed", timeout).await, "a plain-text client reached a TLS worker");
    let anonymous_tls = ClientOptions::new(None, Some(&ClientTls { ca: p("ca.pem"), identity: None, server_name: None })).unwrap();
    let anonymous = InstanceClient::connect(&waddr, &anonymous_tls).unwrap();
    assert!(!anonymous.model_ready("deployed", timeout).await, "a client without a certificate reached a mutual-TLS worker");
    let tls = ClientTls { ca: p("ca.pem"), identity: Some((p("client.pem"), p("client.key"))), server_name: None };
    let upstream = ClientOptions::new(None, Some(&tls)).unwrap();
    assert!(InstanceClient::connect(&waddr, &upstream).unwrap().model_ready("deployed", timeout).await, "TLS with a client certificate");

    // The frontend over it, with TLS on its own listeners.
    let spec = ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]);
    let cfg = FrontendConfig { upstream, ..FrontendConfig::new(spec, vec![waddr.clone()]) };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await;
    let limits = ServeOptions { tls: Some(server_files(None)), ..Default::default() };
    let serving = Serving::start(frontend, ServingOptions { limits, ..Default::default() }).await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let haddr = http.local_addr().unwrap().to_string();
    tokio::spawn(parm_serve::server::http::serve_shared(http, serving.clone(), std::future::pending()));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = grpc.local_addr().unwrap();
    tokio::spawn(parm_serve::server::grpc::serve_grpc(grpc, serving.clone(), std::future::pending()));

    let (status, _) =
        https(&haddr, &p("ca.pem"), "GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let body = good_body(2).to_string();
    let request = format!(
        "POST /v2/models/lin/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = https(&haddr, &p("ca.pem"), &request).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(output_of(&answer), expected(&input(2)), "{answer}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(&haddr).await.unwrap();
    tcp.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await.expect("plain text left hanging");
    assert!(!String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"), "plain text was served");

    // gRPC over TLS.
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(p("ca.pem")).unwrap());
    let channel = tonic::transport::Channel::from_shared(format!("https://localhost:{}", gaddr.port()))
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let ready = client.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner();
    assert!(ready.ready);
    std::fs::remove_dir_all(&dir).unwrap();
}
