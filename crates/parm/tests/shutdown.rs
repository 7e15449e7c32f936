//! Graceful shutdown of `parm serve` and `parm worker` processes: SIGTERM stops accepting,
//! lets the requests in flight finish (each gets its answer), then the process exits 0; the
//! drain deadline bounds how long that may take.
//!
//! Instances are `parm worker` processes serving a random MLP (no training) with an injected
//! delay, so requests are still in flight when the signal comes; answers are checked against
//! the model computed offline.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parm_bench::cluster::{Instance, InstanceSpec, start_instance};
use parm_nn::{ModelKind, Predictor};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn worker(model: &std::path::Path, delay_ms: u64) -> Instance {
    let spec = InstanceSpec {
        model: model.to_path_buf(),
        name: DEPLOYED.into(),
        fault: if delay_ms > 0 { format!("delay_ms={delay_ms},prob=1,seed=1") } else { String::new() },
        listen: None,
        netns: None,
        cpus: None,
    };
    start_instance(exe(), spec).await.expect("start parm worker")
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|i| (0..784).map(|j| ((i * 784 + j) % 97) as f32 / 97.0).collect()).collect()
}

type Answer = Result<(u16, serde_json::Value), String>;

fn send(client: &reqwest::Client, addr: &str, id: usize, input: &[f32]) -> tokio::task::JoinHandle<Answer> {
    let (client, url, body) = (client.clone(), format!("http://{addr}/v2/models/{DEPLOYED}/infer"), infer_body(&id.to_string(), input));
    tokio::spawn(async move {
        let resp = client.post(&url).json(&body).send().await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.json().await.map_err(|e| format!("body: {e}"))?;
        Ok((status, body))
    })
}

async fn exit_code(served: &mut Served, within: Duration) -> (Option<i32>, Duration) {
    let t = Instant::now();
    let status = tokio::time::timeout(within, served.child.wait()).await.expect("process did not exit in time").unwrap();
    (status.code(), t.elapsed())
}

/// SIGTERM to `parm serve` with 4 requests in flight (each held ~0.8-1.6 s by its instance):
/// all 4 are answered exactly, a request after the signal is refused, and the exit code is 0.
#[test]
fn serve_sigterm_drains_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let f = Predictor::load(&model).unwrap();
    let xs = Arc::new(inputs(4));
    runtime().block_on(async {
        let (w0, w1) = (worker(&model, 800).await, worker(&model, 800).await);
        let deployed = format!("{},{}", w0.addr, w1.addr);
        let mut served = start_serve(&["--deployed", &deployed, "--k", "1", "--drain-timeout-ms", "30000"]).await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let tasks: Vec<_> = (0..4).map(|i| send(&client, &served.addr, i, &xs[i])).collect();
        tokio::time::sleep(Duration::from_millis(400)).await; // all 4 admitted and at their instances
        let signalled = Instant::now();
        signal(served.pid(), libc::SIGTERM);
        // Well after the signal (a loaded machine included), still within the drain.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fresh = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let late = send(&fresh, &served.addr, 99, &xs[0]).await.unwrap();
        let (code, _) = exit_code(&mut served, Duration::from_secs(40)).await;
        let exited = signalled.elapsed();
        for (i, t) in tasks.into_iter().enumerate() {
            let (status, body) = t.await.unwrap().unwrap_or_else(|e| panic!("in-flight request {i} lost at shutdown: {e}"));
            assert_eq!(status, 200, "in-flight request {i}: {body}");
            assert_eq!(body["id"], serde_json::json!(i.to_string()));
            assert!(close(&output(&body), &f.infer(&xs[i], 1).unwrap()), "request {i}: wrong answer {body}");
        }
        match late {
            Err(_) => {}                                                     // listener closed: connection refused
            Ok((503, body)) => assert!(body["error"].is_string(), "{body}"), // kept-alive, shed
            Ok(other) => panic!("a request after SIGTERM was served: {other:?}"),
        }
        assert_eq!(code, Some(0), "parm serve exit code after SIGTERM");
        assert!(exited < Duration::from_secs(20), "drain took {exited:?} for ~1.6 s of work");
        println!("serve drained 4 in-flight requests and exited 0 {:.2} s after SIGTERM", exited.as_secs_f64());
        drop((w0, w1));
    });
}

/// The drain deadline bounds shutdown: a request held 30 s by its instance does not keep
/// `parm serve --drain-timeout-ms 1000` alive; it exits 0 about 1 s after SIGTERM, and the
/// client's connection is closed (no hang).
#[test]
fn serve_drain_deadline_bounds_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    runtime().block_on(async {
        let w = worker(&model, 30_000).await;
        let mut served =
            start_serve(&["--deployed", &w.addr, "--k", "1", "--drain-timeout-ms", "1000", "--instance-timeout-ms", "60000"]).await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let stuck = send(&client, &served.addr, 0, &inputs(1)[0]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        signal(served.pid(), libc::SIGTERM);
        let (code, took) = exit_code(&mut served, Duration::from_secs(30)).await;
        assert_eq!(code, Some(0));
        assert!(took >= Duration::from_millis(900), "exited after {took:?}, before the drain deadline");
        assert!(took < Duration::from_secs(15), "exited {took:?} after SIGTERM, drain deadline 1 s");
        let answer = tokio::time::timeout(Duration::from_secs(10), stuck).await.expect("client left hanging").unwrap();
        assert!(answer.is_err() || answer.as_ref().is_ok_and(|(s, _)| *s >= 500), "{answer:?}");
        println!("serve exited 0 {:.2} s after SIGTERM with a request stuck (drain deadline 1 s)", took.as_secs_f64());
        drop(w);
    });
}

/// SIGTERM to a `parm worker` holding a request: the request still gets its exact answer
/// through the frontend, and the worker exits 0.
#[test]
fn worker_sigterm_finishes_its_request_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let f = Predictor::load(&model).unwrap();
    let x = inputs(1).remove(0);
    runtime().block_on(async {
        let mut w = worker(&model, 1000).await;
        let served = start_serve(&["--deployed", &w.addr, "--k", "1"]).await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let pending = send(&client, &served.addr, 0, &x);
        tokio::time::sleep(Duration::from_millis(400)).await;
        signal(w.pid().expect("worker running") as i32, libc::SIGTERM);
        let (status, body) = pending.await.unwrap().expect("answer");
        assert_eq!(status, 200, "{body}");
        assert!(close(&output(&body), &f.infer(&x, 1).unwrap()), "wrong answer {body}");
        let code = tokio::time::timeout(Duration::from_secs(20), w.wait()).await.expect("worker did not exit").unwrap();
        assert_eq!(code.code(), Some(0), "parm worker exit code after SIGTERM");
        drop(served);
    });
}
