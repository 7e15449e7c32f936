//! `parm serve --model-repository DIR` as a process: two model folders (one coded with k = 2,
//! one uncoded) over real `parm worker`s behind one frontend, a folder without config.toml
//! skipped, and a bad config.toml stopping the server with an error that names the file.

mod support;

use std::path::Path;
use std::time::Duration;

use parm_bench::cluster::{InstanceSpec, start_instance};
use parm_nn::ModelKind;
use serde_json::{Value, json};
use support::{DEPLOYED, PARITY, close, exe, infer_body, output, start_serve, write_model};

fn write_config(repo: &Path, model: &str, text: &str) {
    std::fs::create_dir_all(repo.join(model)).unwrap();
    std::fs::write(repo.join(model).join("config.toml"), text).unwrap();
}

#[test]
fn serve_model_repository_routes_each_model_and_names_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let deployed_path = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let parity_path = write_model(dir.path(), PARITY, ModelKind::Parity);
    let repo = dir.path().join("repository");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = |path: &Path, name: &str| InstanceSpec { model: path.to_path_buf(), name: name.into(), fault: String::new(), listen: None, netns: None, cpus: None };
        let deployed = start_instance(exe(), spec(&deployed_path, DEPLOYED)).await.unwrap();
        let parity = start_instance(exe(), spec(&parity_path, PARITY)).await.unwrap();
        let (d, p) = (&deployed.addr, &parity.addr);
        write_config(&repo, "coded", &format!("[model]\ndeployed = [\"{d}\"]\nparity = [\"{p}\"]\nk = 2\nencoder = \"addition\"\n[preprocess]\nscale = 0.5\n"));
        write_config(&repo, "plain", &format!("[model]\ndeployed = [\"{d}\"]\n[deadlines]\ninstance_timeout_ms = 3000\n"));
        std::fs::create_dir_all(repo.join("notes")).unwrap();
        let served = start_serve(&["--model-repository", repo.to_str().unwrap(), "--decode-grace-ms", "500", "--straggler-min-us", "1000000"]).await;
        let base = format!("http://{}", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        let index: Value = client.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            index,
            json!([{"name": "coded", "version": "1", "state": "READY", "reason": ""}, {"name": "plain", "version": "1", "state": "READY", "reason": ""}])
        );
        let meta: Value = client.get(format!("{base}/v2/models/coded")).send().await.unwrap().json().await.unwrap();
        assert_eq!(meta["parameters"]["preprocess"], json!({"scale": 0.5}), "{meta}");
        let x: Vec<f32> = (0..784).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut answers = Vec::new();
        // "coded" scales its queries by 0.5 ([preprocess]) before coding: sent 2x, it sees x.
        let x2: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        for (model, sent) in [("coded", &x2), ("plain", &x)] {
            let r = client.post(format!("{base}/v2/models/{model}/infer")).json(&infer_body("1", sent)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{model}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["model_name"], model);
            answers.push(output(&v));
        }
        // Both models front the same deployed instance and see the same query: the same answer (the flags
        // given hold a reconstruction back 500 ms, for every model: the original wins).
        assert_eq!(answers[0].len(), 10);
        assert!(close(&answers[0], &answers[1]), "{answers:?}");
        let r = client.post(format!("{base}/v2/models/notes/infer")).json(&infer_body("1", &x)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("unknown model 'notes'"));
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("nv_inference_count{model=\"coded\",version=\"1\"} 1"), "{metrics}");
        assert!(metrics.contains("nv_inference_count{model=\"plain\",version=\"1\"} 1"), "{metrics}");
        drop((served, deployed, parity));
    });

    // A bad config: parm serve exits with an error naming the file, before listening.
    write_config(&repo, "broken", "[model]\ndeployed = [\"127.0.0.1:1\"]\nk = \"two\"\n");
    let out = std::process::Command::new(exe())
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--model-repository", repo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&repo.join("broken").join("config.toml").display().to_string()), "{stderr}");
    assert!(out.stdout.is_empty(), "no 'listening on' line: {}", String::from_utf8_lossy(&out.stdout));
}
