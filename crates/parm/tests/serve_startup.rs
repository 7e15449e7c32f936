//! `parm serve` started before its instances (as on Kubernetes, where the frontend's pod may
//! come up first): it listens at once, says "not ready" on the health endpoints and 503 on
//! inference, logs what it waits for, and serves as soon as a deployed instance answers; no
//! exit, no crash loop.

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parm_bench::cluster::{InstanceSpec, start_instance};
use parm_nn::{ModelKind, Predictor};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET or POST `url`; `None` while nothing answers on the port.
async fn call(client: &reqwest::Client, url: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let req = match body {
        Some(b) => client.post(url).json(b),
        None => client.get(url),
    };
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

#[test]
fn serve_listens_before_its_instances_and_serves_once_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let f = Predictor::load(&model).unwrap();
    let x: Vec<f32> = (0..784).map(|j| (j % 13) as f32 / 13.0).collect();
    let (http_port, worker_port) = (free_port(), free_port());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let worker_addr = format!("127.0.0.1:{worker_port}");
        let mut serve = tokio::process::Command::new(exe())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{http_port}"), "--grpc-listen", "off", "--k", "1"])
            .args(["--deployed", &worker_addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start parm serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(serve.stderr.take().unwrap()).lines();
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err_lines.next_line().await {
                log.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let mut out_lines = BufReader::new(serve.stdout.take().unwrap()).lines();
        let first_line = tokio::spawn(async move { out_lines.next_line().await });

        // No instance yet: the server answers, not ready, within seconds.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let base = format!("http://127.0.0.1:{http_port}");
        let started = Instant::now();
        let ready = loop {
            if let Some(r) = call(&client, &format!("{base}/v2/health/ready"), None).await {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "parm serve did not listen within 20 s without instances");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(ready.0, 503, "server ready without any instance: {ready:?}");
        let (live, _) = call(&client, &format!("{base}/v2/health/live"), None).await.unwrap();
        assert_eq!(live, 200);
        let (status, _) = call(&client, &format!("{base}/v2/models/{DEPLOYED}/ready"), None).await.unwrap();
        assert_eq!(status, 503);
        let (status, body) = call(&client, &format!("{base}/v2/models/{DEPLOYED}/infer"), Some(&infer_body("a", &x))).await.unwrap();
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("not ready") && error.contains(&worker_addr), "{body}");
        let (_, index) = call(&client, &format!("{base}/v2/repository/index"), Some(&serde_json::json!({}))).await.unwrap();
        assert_eq!(index[0]["state"], "UNAVAILABLE", "{index}");
        assert!(index[0]["reason"].as_str().unwrap_or_default().contains("waiting for"), "{index}");
        tokio::time::sleep(Duration::from_millis(1500)).await; // still up, and the wait is logged
        assert!(serve.try_wait().unwrap().is_none(), "parm serve exited without instances");
        let logged = stderr.lock().unwrap().clone();
        assert!(logged.contains("is not ready") && logged.contains(&worker_addr), "no log line naming what it waits for: {logged}");

        // The deployed instance comes up: the frontend learns the model and serves it.
        let spec = InstanceSpec {
            model: model.clone(),
            name: DEPLOYED.into(),
            fault: String::new(),
            listen: Some(worker_addr.clone()),
            netns: None,
            cpus: None,
        };
        let worker = start_instance(exe(), spec).await.expect("start parm worker");
        let came_up = Instant::now();
        loop {
            if call(&client, &format!("{base}/v2/health/ready"), None).await.is_some_and(|(s, _)| s == 200) {
                break;
            }
            assert!(came_up.elapsed() < Duration::from_secs(30), "not ready 30 s after the instance came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("ready {:.2} s after the deployed instance came up", came_up.elapsed().as_secs_f64());
        let line = tokio::time::timeout(Duration::from_secs(10), first_line).await.expect("no stdout line").unwrap().unwrap();
        assert_eq!(line.as_deref(), Some(format!("listening on 127.0.0.1:{http_port}").as_str()));
        let (status, body) = call(&client, &format!("{base}/v2/models/{DEPLOYED}/infer"), Some(&infer_body("b", &x))).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(close(&output(&body), &f.infer(&x, 1).unwrap()), "wrong answer {body}");
        drop(worker);
    });
}
