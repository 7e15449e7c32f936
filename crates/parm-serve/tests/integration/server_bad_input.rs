//! Bad input against the real HTTP and gRPC frontends over 127.0.0.1: malformed JSON, wrong
//! names, shapes, datatypes, sizes that do not match the data, NaN and infinities, empty
//! batches, huge bodies and gzip bombs, truncated binary tensors, slow clients. Each gets a
//! clear 4xx (`{"error": ...}`, Triton's shape) or gRPC INVALID_ARGUMENT, and good requests
//! sent alongside all the while are answered exactly.

use crate::support;

use std::io::Write;
use std::time::{Duration, Instant};

use parm_serve::oip::security::ServeOptions;
use serde_json::{Value, json};
use support::{Cluster, GoodTraffic, IN, cluster, expected, good_body, input, output_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: usize = 1 << 20;
const READ_TIMEOUT: Duration = Duration::from_millis(1000);

fn options() -> ServeOptions {
    ServeOptions { max_body_bytes: LIMIT, header_read_timeout: READ_TIMEOUT, body_read_timeout: READ_TIMEOUT, ..Default::default() }
}

async fn start() -> Cluster {
    cluster(options(), None).await
}

fn infer_url(c: &Cluster) -> String {
    format!("{}/v2/models/lin/infer", c.url)
}

/// Asserts a Triton-shaped error: status `want`, body `{"error": "<non-empty>"}`; returns it.
async fn expect_error(r: reqwest::Response, want: u16, what: &str) -> String {
    assert_eq!(r.status().as_u16(), want, "{what}");
    let v: Value = r.json().await.unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no 'error' string in {v}"));
    assert!(!msg.is_empty(), "{what}");
    msg.to_string()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A binary-extension request: JSON header + `raw`, header length `header_len` (default: the
/// JSON's own length).
async fn post_binary(c: &Cluster, header: &Value, raw: &[u8], header_len: Option<&str>) -> reqwest::Response {
    let mut body = serde_json::to_vec(header).unwrap();
    let n = header_len.map_or_else(|| body.len().to_string(), str::to_string);
    body.extend_from_slice(raw);
    reqwest::Client::new().post(infer_url(c)).header("Inference-Header-Content-Length", n).body(body).send().await.unwrap()
}

fn tensor(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mismatched_json_requests_get_400() {
    let c = start().await;
    let good = GoodTraffic::start(&c.url, None);
    let one = input(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"inputs\": [".to_vec()),
        ("not JSON at all", b"\x00\xff\xfe garbage".to_vec()),
        ("empty body", Vec::new()),
        ("JSON array", b"[1, 2, 3]".to_vec()),
        ("JSON string", b"\"infer\"".to_vec()),
        ("NaN literal", br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,0,0,0]}]}"#.to_vec()),
        ("Infinity literal", br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[Infinity,0,0,0]}]}"#.to_vec()),
        ("no inputs", serde_json::to_vec(&json!({"id": "x"})).unwrap()),
        ("inputs not an array", serde_json::to_vec(&json!({"inputs": {"name": "input"}})).unwrap()),
        ("zero inputs", serde_json::to_vec(&json!({"inputs": []})).unwrap()),
        ("two inputs", serde_json::to_vec(&json!({"inputs": [tensor(json!([1, IN]), "FP32", json!(one))["inputs"][0], tensor(json!([1, IN]), "FP32", json!(one))["inputs"][0]]})).unwrap()),
        ("wrong input name", serde_json::to_vec(&json!({"inputs": [{"name": "pixels", "shape": [1, IN], "datatype": "FP32", "data": one}]})).unwrap()),
        ("input name not a string", serde_json::to_vec(&json!({"inputs": [{"name": 7, "shape": [1, IN], "datatype": "FP32", "data": one}]})).unwrap()),
        ("wrong output name", serde_json::to_vec(&json!({"inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"], "outputs": [{"name": "logits"}]})).unwrap()),
        ("id not a string", serde_json::to_vec(&json!({"id": 5, "inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"]})).unwrap()),
        ("parameters not an object", serde_json::to_vec(&json!({"parameters": [1], "inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"]})).unwrap()),
        ("negative timeout", serde_json::to_vec(&json!({"parameters": {"timeout": -5}, "inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"]})).unwrap()),
        ("wrong shape (not whole queries)", serde_json::to_vec(&tensor(json!([1, 3]), "FP32", json!([1, 2, 3]))).unwrap()),
        ("negative dim", serde_json::to_vec(&tensor(json!([-1, IN]), "FP32", json!(one))).unwrap()),
        ("fractional dim", serde_json::to_vec(&tensor(json!([1.5, IN]), "FP32", json!(one))).unwrap()),
        ("shape not an array", serde_json::to_vec(&tensor(json!("1x4"), "FP32", json!(one))).unwrap()),
        ("shape overflowing usize", serde_json::to_vec(&tensor(json!([u64::MAX, u64::MAX]), "FP32", json!(one))).unwrap()),
        ("huge announced shape, tiny data", serde_json::to_vec(&tensor(json!([1024, 1 << 30]), "FP32", json!([1]))).unwrap()),
        ("batch over max_batch_size", serde_json::to_vec(&tensor(json!([2000, IN]), "FP32", json!(vec![0.0; 2000 * IN]))).unwrap()),
        ("too few values", serde_json::to_vec(&tensor(json!([2, IN]), "FP32", json!(one))).unwrap()),
        ("too many values", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!(input(2)))).unwrap()),
        ("missing data", serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32"}]})).unwrap()),
        ("string in data", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!([1, 2, "3", 4]))).unwrap()),
        ("null in data", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!([1, 2, null, 4]))).unwrap()),
        ("object in data", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!({"a": 1}))).unwrap()),
        ("unknown datatype", serde_json::to_vec(&tensor(json!([1, IN]), "FP31", json!(one))).unwrap()),
        ("lowercase datatype", serde_json::to_vec(&tensor(json!([1, IN]), "fp32", json!(one))).unwrap()),
        ("BOOL datatype", serde_json::to_vec(&tensor(json!([1, IN]), "BOOL", json!([true, false, true, false]))).unwrap()),
        ("BYTES datatype", serde_json::to_vec(&tensor(json!([1, IN]), "BYTES", json!(["a", "b", "c", "d"]))).unwrap()),
        ("datatype not a string", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!(one)).pointer("/inputs/0").map(|_| json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": 32, "data": one}]})).unwrap()).unwrap()),
        ("UINT8 out of range", serde_json::to_vec(&tensor(json!([1, IN]), "UINT8", json!([1, 2, 300, 4]))).unwrap()),
        ("INT8 negative out of range", serde_json::to_vec(&tensor(json!([1, IN]), "INT8", json!([1, 2, -129, 4]))).unwrap()),
        ("fraction for INT32", serde_json::to_vec(&tensor(json!([1, IN]), "INT32", json!([1, 2, 3.5, 4]))).unwrap()),
        ("FP64 beyond f32 range (infinite)", serde_json::to_vec(&tensor(json!([1, IN]), "FP64", json!([1e300, 0, 0, 0]))).unwrap()),
        ("FP32 beyond f32 range (infinite)", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!([-1e39, 0, 0, 0]))).unwrap()),
        ("empty batch [0, 4]", serde_json::to_vec(&tensor(json!([0, IN]), "FP32", json!([]))).unwrap()),
        ("empty shape [] with no data", serde_json::to_vec(&tensor(json!([]), "FP32", json!([]))).unwrap()),
        ("empty data for [1, 4]", serde_json::to_vec(&tensor(json!([1, IN]), "FP32", json!([]))).unwrap()),
        ("classification extension", serde_json::to_vec(&json!({"inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"], "outputs": [{"name": "output", "parameters": {"classification": 3}}]})).unwrap()),
        ("binary_data_output not a bool", serde_json::to_vec(&json!({"parameters": {"binary_data_output": "yes"}, "inputs": tensor(json!([1, IN]), "FP32", json!(one))["inputs"]})).unwrap()),
    ];
    let client = reqwest::Client::new();
    for (what, body) in &cases {
        let r = client.post(infer_url(&c)).header("Content-Type", "application/json").body(body.clone()).send().await.unwrap();
        expect_error(r, 400, what).await;
    }
    // Unknown model or version: 404 with the same body shape.
    for url in [format!("{}/v2/models/nope/infer", c.url), format!("{}/v2/models/lin/versions/9/infer", c.url)] {
        let r = client.post(&url).json(&good_body(1)).send().await.unwrap();
        expect_error(r, 404, &url).await;
    }
    // Not NaN-tolerant by accident: nested arrays with the right count still work.
    let r = client.post(infer_url(&c)).json(&tensor(json!([1, IN]), "FP32", json!([[1, 2], [3, 4]]))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    good.finish(cases.len() / 10).await;
    let stats = c.serving.stats_json();
    assert!(stats["model_stats"][0]["inference_stats"]["fail"]["count"].as_u64().unwrap() >= cases.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_infinities_and_truncated_binary_tensors_get_400() {
    let c = start().await;
    let good = GoodTraffic::start(&c.url, None);
    let header = |dt: &str, size: usize| json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": dt, "parameters": {"binary_data_size": size}}]});
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
        let raw = f32_bytes(&[0.5, bad, 1.0, 2.0]);
        let msg = expect_error(post_binary(&c, &header("FP32", 16), &raw, None).await, 400, &format!("FP32 {bad}")).await;
        assert!(msg.contains("not finite"), "{msg}");
    }
    // FP16 infinity / NaN and FP64 NaN, converted to FP32: rejected too.
    for (dt, raw) in [
        ("FP16", [0x3c00u16, 0x7c00, 0, 0].iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>()),
        ("FP16", [0x7e00u16, 0, 0, 0].iter().flat_map(|h| h.to_le_bytes()).collect()),
        ("BF16", [0x7f80u16, 0, 0, 0].iter().flat_map(|h| h.to_le_bytes()).collect()),
        ("FP64", [f64::NAN, 0.0, 0.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
    ] {
        let n = raw.len();
        expect_error(post_binary(&c, &header(dt, n), &raw, None).await, 400, dt).await;
    }
    let raw = f32_bytes(&input(1));
    let cases: Vec<(&str, Value, Vec<u8>, Option<&str>)> = vec![
        ("binary tensor truncated (size says 16, 12 follow)", header("FP32", 16), raw[..12].to_vec(), None),
        ("binary tensor with extra bytes", header("FP32", 16), [&raw[..], &[0u8; 4]].concat(), None),
        ("size matches bytes but not the shape", header("FP32", 12), raw[..12].to_vec(), None),
        ("odd byte count for FP32", header("FP32", 15), raw[..15].to_vec(), None),
        ("no binary data at all", header("FP32", 16), Vec::new(), None),
        ("binary data without binary_data_size", tensor(json!([1, IN]), "FP32", json!(input(1))), raw.clone(), None),
        ("binary_data_size negative", header("FP32", 16).pointer("/inputs").map(|_| json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "parameters": {"binary_data_size": -16}}]})).unwrap(), raw.clone(), None),
        ("header length beyond the body", header("FP32", 16), raw.clone(), Some("999999")),
        ("header length not a number", header("FP32", 16), raw.clone(), Some("sixteen")),
        ("header length negative", header("FP32", 16), raw.clone(), Some("-1")),
        ("header length cuts the JSON", header("FP32", 16), raw.clone(), Some("20")),
        ("BYTES binary", header("BYTES", 8), vec![4, 0, 0, 0, b'a', b'b', b'c', b'd'], None),
    ];
    for (what, h, raw, len) in &cases {
        expect_error(post_binary(&c, h, raw, *len).await, 400, what).await;
    }
    // The same tensor, well formed, is fine.
    let r = post_binary(&c, &header("FP32", 16), &raw, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(output_of(&r.json::<Value>().await.unwrap()), expected(&input(1)));
    good.finish(2).await;
}

/// Sends `head` (request line and headers) and then `body` over a raw TCP connection, in the
/// background, ignoring write errors (the server may answer and close early); returns the
/// status code of the response, or `None` if the connection closed without one.
async fn raw_request(addr: &str, head: String, body: Vec<u8>, chunk: usize) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for c in body.chunks(chunk.max(1)) {
            if wr.write_all(c).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&tmp[..n]);
                if let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                    break line.split(' ').nth(1).and_then(|s| s.parse().ok());
                }
            }
            Err(_) => panic!("no response within 30 s"),
        }
    };
    writer.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_and_gzip_bombs_get_413() {
    let c = start().await;
    let good = GoodTraffic::start(&c.url, None);
    let client = reqwest::Client::new();
    // Announced by Content-Length: refused before the body is read.
    let head =
        format!("POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    assert_eq!(raw_request(&c.http_addr, head, Vec::new(), 1).await, Some(413));
    // Chunked, no length announced: cut off once past the limit.
    let mut chunked = Vec::new();
    for _ in 0..(4 * LIMIT / 65536) {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 65536));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    assert_eq!(raw_request(&c.http_addr, head, chunked, 65536).await, Some(413));
    // Just over the limit with a body reqwest sends whole: 413 with a JSON error.
    let mut big = serde_json::to_vec(&good_body(1)).unwrap();
    big.resize(LIMIT + 1, b' ');
    let r = client.post(infer_url(&c)).body(big).send().await;
    if let Ok(r) = r {
        expect_error(r, 413, "body one byte over the limit").await;
    } // (a client may also see the connection closed while still sending: also fine)
    // A gzip bomb: 256 MiB of spaces in ~250 KiB; decompression stops at the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&block).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < LIMIT);
    let t = Instant::now();
    let r = client.post(infer_url(&c)).header("Content-Encoding", "gzip").body(bomb).send().await.unwrap();
    // The unread rest of the body ends the connection, and the answer says so.
    assert_eq!(r.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "gzip bomb");
    let msg = expect_error(r, 413, "gzip bomb").await;
    assert!(msg.contains("limit"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(20), "the bomb took {:?}", t.elapsed());
    // A corrupt gzip stream: 400.
    let r = client
        .post(infer_url(&c))
        .header("Content-Encoding", "gzip")
        .body(b"\x1f\x8b\x08\x00garbage-not-deflate".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "corrupt gzip").await;
    // A body just under the limit is read (and then judged on its content).
    let mut fits = serde_json::to_vec(&good_body(1)).unwrap();
    fits.resize(LIMIT - 1, b' ');
    let r = client.post(infer_url(&c)).body(fits).send().await.unwrap();
    assert_eq!(r.status(), 200);
    good.finish(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let c = start().await;
    let good = GoodTraffic::start(&c.url, None);
    // Headers in, then the body stops after 10 of 100 bytes: 408 after the body timeout.
    let t = Instant::now();
    let stream = TcpStream::connect(&c.http_addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\":").await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut resp)).await.expect("cut off within 30 s");
    let waited = t.elapsed();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(waited >= READ_TIMEOUT - Duration::from_millis(50), "cut off too early: {waited:?}");
    drop(wr);
    // A body trickled a byte at a time also runs out of time.
    let t = Instant::now();
    let stream = TcpStream::connect(&c.http_addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut resp)).await.expect("cut off within 30 s");
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&resp));
    assert!(t.elapsed() < Duration::from_secs(20));
    trickle.abort();
    // Headers that never end: the connection is closed after the header timeout.
    for partial in [&b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\n"[..], b"GET /v2/hea", b""] {
        let t = Instant::now();
        let mut s = TcpStream::connect(&c.http_addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        let mut resp = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp)).await;
        assert!(r.is_ok(), "a stalled client {:?} kept its connection 30 s", String::from_utf8_lossy(partial));
        assert!(t.elapsed() >= READ_TIMEOUT - Duration::from_millis(50), "closed too early: {:?}", t.elapsed());
    }
    good.finish(2).await;
}

mod grpc {
    use super::*;
    use parm_serve::oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
    use parm_serve::oip::grpc::model_infer_request::InferInputTensor;
    use parm_serve::oip::grpc::{self as pb, InferTensorContents};
    use tonic::Code;

    fn request(datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "lin".into(),
            inputs: vec![InferInputTensor { name: "input".into(), datatype: datatype.into(), shape, ..Default::default() }],
            raw_input_contents: vec![raw],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_invalid_argument() {
        let c = start().await;
        let good = GoodTraffic::start(&c.url, None);
        let mut g = GrpcInferenceServiceClient::connect(c.grpc.clone()).await.unwrap().max_encoding_message_size(64 << 20);
        let ok = || request("FP32", vec![1, IN as i64], f32_bytes(&input(1)));
        let with = |f: &dyn Fn(&mut pb::ModelInferRequest)| {
            let mut r = ok();
            f(&mut r);
            r
        };
        let typed = |shape: Vec<i64>, c: InferTensorContents| pb::ModelInferRequest {
            model_name: "lin".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape,
                contents: Some(c),
                ..Default::default()
            }],
            ..Default::default()
        };
        let cases: Vec<(&str, pb::ModelInferRequest, Code)> = vec![
            ("unknown model", with(&|r| r.model_name = "nope".into()), Code::NotFound),
            ("wrong input name", with(&|r| r.inputs[0].name = "pixels".into()), Code::InvalidArgument),
            ("no inputs", with(&|r| r.inputs.clear()), Code::InvalidArgument),
            ("two inputs", with(&|r| r.inputs.push(r.inputs[0].clone())), Code::InvalidArgument),
            ("unknown datatype", with(&|r| r.inputs[0].datatype = "FP31".into()), Code::InvalidArgument),
            ("BOOL", request("BOOL", vec![1, IN as i64], vec![1; IN]), Code::InvalidArgument),
            ("wrong shape", request("FP32", vec![1, 3], vec![0; 12]), Code::InvalidArgument),
            ("negative dim", request("FP32", vec![-1, IN as i64], vec![0; 16]), Code::InvalidArgument),
            ("huge dims", request("FP32", vec![i64::MAX, i64::MAX], vec![0; 16]), Code::InvalidArgument),
            ("empty batch", request("FP32", vec![0, IN as i64], vec![]), Code::InvalidArgument),
            ("empty shape", request("FP32", vec![], vec![0; 4]), Code::InvalidArgument),
            ("truncated raw tensor", with(&|r| r.raw_input_contents[0].truncate(13)), Code::InvalidArgument),
            ("raw tensor with extra bytes", with(&|r| r.raw_input_contents[0].extend([0; 4])), Code::InvalidArgument),
            ("two raw entries", with(&|r| r.raw_input_contents.push(vec![0; 16])), Code::InvalidArgument),
            ("NaN", request("FP32", vec![1, IN as i64], f32_bytes(&[0.0, f32::NAN, 0.0, 0.0])), Code::InvalidArgument),
            ("infinity", request("FP32", vec![1, IN as i64], f32_bytes(&[f32::INFINITY, 0.0, 0.0, 0.0])), Code::InvalidArgument),
            (
                "typed contents too short",
                typed(vec![1, IN as i64], InferTensorContents { fp32_contents: vec![1.0; 3], ..Default::default() }),
                Code::InvalidArgument,
            ),
            (
                "typed contents NaN",
                typed(vec![1, IN as i64], InferTensorContents { fp32_contents: vec![1.0, f32::NAN, 0.0, 0.0], ..Default::default() }),
                Code::InvalidArgument,
            ),
            (
                "typed contents of another type",
                typed(vec![1, IN as i64], InferTensorContents { int_contents: vec![1; 4], ..Default::default() }),
                Code::InvalidArgument,
            ),
            (
                "unknown output",
                with(&|r| {
                    r.outputs.push(pb::model_infer_request::InferRequestedOutputTensor { name: "nope".into(), ..Default::default() })
                }),
                Code::InvalidArgument,
            ),
            (
                "bad timeout parameter",
                with(&|r| {
                    r.parameters.insert(
                        "timeout".into(),
                        pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(-1)) },
                    );
                }),
                Code::InvalidArgument,
            ),
        ];
        for (what, req, code) in cases {
            let err = g.model_infer(req).await.expect_err(what);
            assert_eq!(err.code(), code, "{what}: {}", err.message());
            assert!(!err.message().is_empty(), "{what}");
        }
        // A message over the configured limit is refused by the transport without being decoded.
        let big = request("FP32", vec![1, IN as i64], vec![0; LIMIT + 16]);
        let err = g.model_infer(big).await.expect_err("oversized message");
        assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument), "{err:?}");
        // The same connection still serves a good request.
        let out = g.model_infer(ok()).await.unwrap().into_inner();
        assert_eq!(parm_serve::oip::grpc::decode_f32_le(&out.raw_output_contents[0]).unwrap(), expected(&input(1)));
        good.finish(2).await;
    }
}
