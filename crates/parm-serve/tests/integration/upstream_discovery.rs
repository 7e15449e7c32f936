//! Instance discovery under load: the deployed instances come from a watched file
//! (`file:PATH`, see `parm_serve::upstream::discovery`) whose list changes while good requests
//! flow. Instances that join get calls, an instance that leaves gets none after the next
//! discovery round and can then be stopped, health probes follow the set, and no request fails.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::{InferenceBackend, LinearBackend};
use parm_serve::instance::worker::{WorkerOptions, spawn_worker};
use parm_serve::oip::ModelSpec;
use parm_serve::server::api::Serving;
use support::*;

const EVERY: Duration = Duration::from_millis(100);

/// Writes `addrs` to the instance file, with a modification time later than any before (so
/// that a rewrite within the file system's time resolution is still seen).
fn write_list(path: &std::path::Path, addrs: &[String], round: u64) {
    std::fs::write(path, addrs.iter().map(|a| format!("{a}\n")).collect::<String>()).unwrap();
    let t = SystemTime::now() + Duration::from_secs(round);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn deployed_addrs(serving: &Serving) -> Vec<String> {
    let m = serving.models().next().unwrap();
    m.health.instances().iter().filter(|g| g.role == "deployed").map(|g| g.addr.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_and_leave_a_watched_file_under_load_without_failed_requests() {
    let dir = std::env::temp_dir().join(format!("parm-discovery-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("deployed");
    let mut backends: Vec<Arc<LinearBackend>> = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let f = models().0;
        backends.push(f.clone());
        workers.push(Some(spawn_worker("127.0.0.1:0", f as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap()));
    }
    let parity = spawn_worker("127.0.0.1:0", models().1 as Arc<dyn InferenceBackend>, WorkerOptions::default()).await.unwrap();
    let addr = |i: usize| workers[i].as_ref().unwrap().addr.to_string();
    let (a0, a1, a2) = (addr(0), addr(1), addr(2));
    write_list(&list, std::slice::from_ref(&a0), 0);

    let cfg = FrontendConfig {
        parity: vec![parity.addr.to_string()],
        parity_model: "parity".into(),
        discovery_interval: EVERY,
        ..FrontendConfig::new(ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]), vec![format!("file:{}", list.display())])
    };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await;
    assert!(frontend.is_discovering());
    let deployed = |f: &Frontend| f.instances().into_iter().filter(|i| i.0 == "deployed").map(|i| i.1).collect::<Vec<_>>();
    assert_eq!(deployed(&frontend), std::slice::from_ref(&a0), "warm_up waits for the first discovery round");
    let serving = Serving::start(frontend.clone(), Default::default()).await.unwrap();
    assert!(serving.ready());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(parm_serve::server::http::serve_shared(listener, serving.clone(), std::future::pending()));
    let traffic = GoodTraffic::start(&url, None);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Two instances join.
    write_list(&list, &[a0.clone(), a1.clone(), a2.clone()], 1);
    tokio::time::sleep(EVERY * 8).await;
    assert_eq!(deployed(&frontend), [a0.clone(), a1.clone(), a2.clone()]);
    assert!(backends[1].calls() > 0 && backends[2].calls() > 0, "joined instances got no calls");
    assert_eq!(deployed_addrs(&serving), [a0.clone(), a1.clone(), a2.clone()], "health probes follow the joined instances");

    // The first leaves: after the next round it gets no new calls, and it can be stopped.
    write_list(&list, &[a1.clone(), a2.clone()], 2);
    tokio::time::sleep(EVERY * 5).await;
    let calls_after_leaving = backends[0].calls();
    workers[0].take().unwrap().shutdown().await.unwrap();
    tokio::time::sleep(EVERY * 8).await;
    assert_eq!(backends[0].calls(), calls_after_leaving, "an instance that left still got calls");
    assert_eq!(deployed(&frontend), [a1.clone(), a2.clone()]);
    assert_eq!(deployed_addrs(&serving), [a1, a2], "health probes follow the instances that left");
    let config = serving.models().next().unwrap().config_json();
    assert_eq!(config["parameters"]["parm_deployed_instances"]["string_value"], "2", "{config}");
    assert!(serving.ready());

    traffic.finish(200).await;
    let calls: Vec<usize> = backends.iter().map(|b| b.calls()).collect();
    println!("calls per deployed instance: {calls:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
