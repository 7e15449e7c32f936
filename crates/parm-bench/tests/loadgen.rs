//! End-to-end tests of the open-loop load generator against tiny axum Open Inference
//! Protocol servers, each on its own thread and runtime so the client's runtime can't stall it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::routing::post;
use parm_bench::{LoadSpec, Query, poisson_schedule, run_open_loop};
use serde_json::{Value, json};

type Handler = Arc<dyn Fn(usize, f32) -> Reply + Send + Sync>;

/// What a test server does with request `id` whose first input value is `x`.
struct Reply {
    delay: Duration,
    status: StatusCode,
    body: Value,
    /// Hold the server-wide lock while delaying: requests are served one at a time.
    serialise: bool,
}

fn logits(class: usize) -> Vec<f32> {
    (0..10).map(|k| if k == class { 1.0 } else { 0.1 * k as f32 / 10.0 }).collect()
}

fn answer(id: &str, class: usize, reconstructed: bool) -> Value {
    json!({
        "model_name": "m",
        "id": id,
        "parameters": {"parm_reconstructed": reconstructed},
        "outputs": [{"name": "logits", "shape": [1, 10], "datatype": "FP32", "data": logits(class)}]
    })
}

/// Starts a server on 127.0.0.1:0 on its own thread and returns its base URL.
fn serve(handler: Handler) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            let app = Router::new()
                .route(
                    "/v2/models/{model}/infer",
                    post(|State((h, lock)): State<(Handler, Arc<tokio::sync::Mutex<()>>)>, Json(req): Json<Value>| async move {
                        let id: usize = req["id"].as_str().unwrap().parse().unwrap();
                        assert_eq!(req["inputs"][0]["name"], "x");
                        assert_eq!(req["inputs"][0]["datatype"], "FP32");
                        assert_eq!(req["inputs"][0]["shape"], json!([1, 4]));
                        let x = req["inputs"][0]["data"][0].as_f64().unwrap() as f32;
                        let r = h(id, x);
                        if r.serialise {
                            let _g = lock.lock().await;
                            tokio::time::sleep(r.delay).await;
                        } else if !r.delay.is_zero() {
                            tokio::time::sleep(r.delay).await;
                        }
                        (r.status, Json(r.body))
                    }),
                )
                .with_state((handler, lock));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn spec(base_url: String, rate_qps: f64, warmup: usize) -> LoadSpec {
    LoadSpec {
        base_url,
        replicas: Vec::new(),
        model: "m".into(),
        input_name: "x".into(),
        rate_qps,
        seed: 42,
        warmup,
        request_timeout: Duration::from_secs(5),
        progress: false,
    }
}

/// Query `i` has label `i % 10` (none when `i % 25 == 2`); its input encodes the class the
/// server will predict: the label, except when `i % 50 == 1` (a wrong answer).
fn queries(n: usize) -> Vec<Query> {
    (0..n)
        .map(|i| {
            let label = i % 10;
            let predicted = if i % 50 == 1 { (label + 1) % 10 } else { label };
            Query { input: vec![predicted as f32, 0.5, -1.0, 2.0], shape: vec![1, 4], label: (i % 25 != 2).then_some(label) }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_accuracy_and_tail_latency() {
    // id % 10 == 7 -> 500; id % 20 == 5 -> 50 ms late; id % 3 == 0 -> reconstructed.
    let url = serve(Arc::new(|id, x| {
        if id % 10 == 7 {
            return Reply {
                delay: Duration::ZERO,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: json!({"error": "boom"}),
                serialise: false,
            };
        }
        Reply {
            delay: if id % 20 == 5 { Duration::from_millis(50) } else { Duration::ZERO },
            status: StatusCode::OK,
            body: answer(&id.to_string(), x as usize, id % 3 == 0),
            serialise: false,
        }
    }));
    let n = 300;
    let r = run_open_loop(&spec(url, 1000.0, 20), &queries(n)).await.unwrap();

    let ok = |i: &usize| i % 10 != 7;
    let errors = (0..n).filter(|i| !ok(i)).count();
    let reconstructed = (0..n).filter(|i| ok(i) && i % 3 == 0).count();
    let labelled = (0..n).filter(|i| ok(i) && i % 25 != 2).count();
    let correct = (0..n).filter(|i| ok(i) && i % 25 != 2 && i % 50 != 1).count();
    assert_eq!(r.requests, n);
    assert_eq!(r.errors, errors, "{r:?}");
    assert_eq!(r.answered, n - errors);
    assert_eq!(r.reconstructed, reconstructed);
    assert_eq!(r.correct, correct);
    assert!((r.accuracy - correct as f64 / labelled as f64).abs() < 1e-12);
    assert!(r.accuracy < 1.0);

    assert_eq!(r.error_samples.len(), 5);
    assert!(r.error_samples.iter().all(|m| m.contains("500") && m.contains("boom")), "{:?}", r.error_samples);

    // 5 % of queries are 50 ms late: they own the tail but not the median.
    let l = &r.latency_ms;
    assert!(l.p99 >= 50.0 && l.max >= 50.0, "{l:?}");
    assert!(l.p50 < 25.0, "{l:?}");
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max);
    assert!(l.mean > 0.0 && l.mean < l.max);
    // The server's 50 ms are not the load generator's: it kept its schedule (generous, for a
    // busy machine).
    assert!(r.send_lag_ms.p50 < 5.0 && r.send_lag_ms.p50 < l.p99, "{:?}", r.send_lag_ms);

    // ~280 measured queries at ~1000 qps, 90 % answered: ~0.3 s and ~800 qps.
    assert!(r.wall_s > 0.15 && r.wall_s < 1.5, "{r:?}");
    assert!(r.throughput_qps > 300.0 && r.throughput_qps < 1500.0, "{r:?}");
}

/// Replicas share the load round robin: with two fast servers and one that answers 40 ms late,
/// a third of the queries are late (so p90 is, p50 is not), and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_take_queries_in_turn() {
    let reply = |late: bool| -> Handler {
        Arc::new(move |id, x| Reply {
            delay: if late { Duration::from_millis(40) } else { Duration::ZERO },
            status: StatusCode::OK,
            body: answer(&id.to_string(), x as usize, false),
            serialise: false,
        })
    };
    let load = LoadSpec { replicas: vec![serve(reply(false)), serve(reply(true))], ..spec(serve(reply(false)), 500.0, 0) };
    let r = run_open_loop(&load, &queries(300)).await.unwrap();
    assert_eq!((r.answered, r.errors), (300, 0));
    let l = &r.latency_ms;
    assert!(l.p50 < 30.0 && l.p90 >= 40.0, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_queueing_shows_in_latency() {
    // One request at a time, 10 ms each: 30 queries arriving within ~15 ms queue up, so the
    // last is answered ~300 ms after it was due.
    let url = serve(Arc::new(|id, x| Reply {
        delay: Duration::from_millis(10),
        status: StatusCode::OK,
        body: answer(&id.to_string(), x as usize, false),
        serialise: true,
    }));
    let n = 30;
    let r = run_open_loop(&spec(url, 2000.0, 0), &queries(n)).await.unwrap();
    assert_eq!(r.answered, n, "{r:?}");
    let l = &r.latency_ms;
    assert!(l.max >= 250.0, "{l:?}");
    assert!(l.p50 >= 100.0, "{l:?}");
    assert!(l.mean >= 100.0, "{l:?}");
    assert!(r.wall_s >= 0.28, "{r:?}");
}

/// The client's own runtime is blocked for 200 ms right after the run starts, so every query
/// due in the first ~20 ms leaves ~200 ms late. The server answers at once; latency measured
/// from the actual send would be ~1 ms, from the intended send time it must be ~200 ms.
#[tokio::test(flavor = "current_thread")]
async fn latency_is_measured_from_intended_send_time() {
    let url = serve(Arc::new(|id, x| Reply {
        delay: Duration::ZERO,
        status: StatusCode::OK,
        body: answer(&id.to_string(), x as usize, false),
        serialise: false,
    }));
    // Runs at the run's first await, after its start time has been taken.
    tokio::spawn(async { std::thread::sleep(Duration::from_millis(200)) });
    let n = 20;
    let r = run_open_loop(&spec(url, 1000.0, 0), &queries(n)).await.unwrap();
    assert_eq!(r.answered, n, "{r:?}");
    assert!(r.latency_ms.p50 >= 150.0, "{:?}", r.latency_ms);
    assert!(r.latency_ms.max >= 180.0, "{:?}", r.latency_ms);
    // ... and the report says that the load generator, not the server, was late.
    assert!(r.send_lag_ms.max >= 180.0 && r.send_lag_ms.p50 >= 150.0, "{:?}", r.send_lag_ms);
    assert!(r.send_lag_ms.max <= r.latency_ms.max, "lag {:?}, latency {:?}", r.send_lag_ms, r.latency_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ids_bad_bodies_and_timeouts_are_errors() {
    // id % 4 == 1 -> wrong id echoed; id % 4 == 3 -> no outputs; id == 2 -> too slow.
    let url = serve(Arc::new(|id, x| {
        let body = match id % 4 {
            1 => answer(&(id + 1).to_string(), x as usize, false),
            3 => json!({"model_name": "m", "id": id.to_string(), "outputs": []}),
            _ => answer(&id.to_string(), x as usize, true),
        };
        Reply { delay: if id == 2 { Duration::from_secs(2) } else { Duration::ZERO }, status: StatusCode::OK, body, serialise: false }
    }));
    let n = 12;
    let mut s = spec(url, 200.0, 2);
    s.request_timeout = Duration::from_millis(300);
    let r = run_open_loop(&s, &queries(n)).await.unwrap();
    assert_eq!(r.errors, 3 + 3 + 1, "{r:?}");
    assert_eq!(r.answered, 5);
    assert_eq!(r.reconstructed, 5);
    let all = r.error_samples.join("\n");
    assert!(all.contains("id mismatch"), "{all}");
    assert!(all.contains("outputs"), "{all}");
    // The timeout finishes last, so it may not be among the first 5 messages: check via count.
    assert!(r.latency_ms.max < 300.0, "errors must not be recorded: {:?}", r.latency_ms);
}

#[tokio::test]
async fn rejects_bad_specs() {
    let s = spec("http://127.0.0.1:9".into(), 10.0, 5);
    assert!(run_open_loop(&s, &[]).await.is_err());
    assert!(run_open_loop(&s, &queries(5)).await.is_err(), "warmup must be < queries");
    let mut bad = spec("http://127.0.0.1:9".into(), 0.0, 0);
    assert!(run_open_loop(&bad, &queries(5)).await.is_err());
    bad.rate_qps = f64::NAN;
    assert!(run_open_loop(&bad, &queries(5)).await.is_err());
}

#[tokio::test]
async fn connection_refused_is_an_error_not_a_failure() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = run_open_loop(&spec(format!("http://127.0.0.1:{port}"), 500.0, 0), &queries(5)).await.unwrap();
    assert_eq!(r.errors, 5);
    assert_eq!(r.answered, 0);
    assert!(r.accuracy.is_nan());
    assert_eq!(r.latency_ms.max, 0.0);
    assert_eq!(r.throughput_qps, 0.0);
    assert!(!r.error_samples.is_empty());
}

#[test]
fn poisson_schedule_has_the_right_rate() {
    let n = 20_000;
    let rate = 500.0;
    let s = poisson_schedule(n, rate, 7).unwrap();
    assert_eq!(s.len(), n);
    assert_eq!(s[0], Duration::ZERO);
    assert!(s.windows(2).all(|w| w[0] <= w[1]));
    let gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    // Exponential gaps: mean 1/rate = 2 ms, coefficient of variation 1 (sampling sd ~0.7 %).
    assert!((mean * rate - 1.0).abs() < 0.03, "mean gap {mean}");
    assert!((sd / mean - 1.0).abs() < 0.05, "cv {}", sd / mean);
    // Arrivals per 100 ms window: Poisson with mean 50, so variance ~ mean.
    let windows = (s[n - 1].as_secs_f64() / 0.1) as usize;
    let mut counts = vec![0f64; windows];
    for t in &s {
        let w = (t.as_secs_f64() / 0.1) as usize;
        if w < windows {
            counts[w] += 1.0;
        }
    }
    let m = counts.iter().sum::<f64>() / windows as f64;
    let v = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / windows as f64;
    assert!((m / 50.0 - 1.0).abs() < 0.05, "mean count {m}");
    assert!((v / m - 1.0).abs() < 0.25, "dispersion {}", v / m);
    // Seeded: reproducible, and a different seed gives a different schedule.
    assert_eq!(poisson_schedule(100, rate, 7).unwrap(), s[..100]);
    assert_ne!(poisson_schedule(100, rate, 8).unwrap(), s[..100]);
}
