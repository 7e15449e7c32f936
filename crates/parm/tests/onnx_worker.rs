//! `parm worker --model FILE.onnx` over OIP gRPC, and `parm export`: the ONNX fixtures of
//! `tests/onnx/` (made by tests/onnx/fixtures.sh), served by real worker processes on
//! loopback; metadata carries the graph's names and shapes, and answers equal tract's own
//! outputs computed in this process.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use parm_nn::testing::onnx_fixtures;
use parm_nn::{ModelKind, OnnxModel, Predictor};
use parm_serve::upstream::client::InstanceClient;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `parm worker --model MODEL --name NAME ARGS` on a free loopback port: the process
/// (killed on drop) and a client for it.
async fn worker(model: &Path, name: &str, args: &[&str]) -> (Child, InstanceClient) {
    let mut child = Command::new(exe())
        .arg("worker")
        .arg("--model")
        .arg(model)
        .args(["--name", name, "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start parm worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("no address in time").unwrap().expect("worker exited");
    let addr = line.strip_prefix("listening on ").expect("listening on ADDR").trim().to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, InstanceClient::connect_lazy(&addr).unwrap())
}

fn rows(n: usize, d: usize) -> Vec<f32> {
    (0..n * d).map(|i| ((i * 37) % 101) as f32 / 101.0).collect()
}

/// Metadata names and per-query shapes come from the graph; a batch of 3 (and three
/// concurrent single queries, batched by `--max-batch 4`) are answered exactly as tract
/// computes them in process.
#[test]
fn onnx_worker_serves_graph_names_shapes_and_tracts_outputs() {
    let Some(fx) = onnx_fixtures() else { return };
    runtime().block_on(async {
        for (file, input, shape, output) in [
            ("mlp.onnx", "input", vec![784], "logits"),
            ("cnn.onnx", "input", vec![1, 28, 28], "logits"),
            ("sklearn.onnx", "float_input", vec![64], "probabilities"),
        ] {
            let path = fx.path(file);
            let (_w, client) = worker(&path, "m", &["--max-batch", "4", "--max-queue-delay-us", "2000"]).await;
            let spec = client.model_metadata("m", WAIT).await.unwrap();
            assert_eq!((spec.platform.as_str(), spec.input_name.as_str(), spec.output_name.as_str()), ("onnx", input, output), "{file}");
            assert_eq!(spec.input_shape, shape, "{file}");
            assert_eq!(spec.output_shape, vec![10], "{file}");
            let local = OnnxModel::load(&path, None).unwrap();
            let d = local.input_len();
            let x = rows(3, d);
            let full: Vec<i64> = std::iter::once(3).chain(shape.clone()).collect();
            assert_eq!(client.infer("m", &x, &full, WAIT).await.unwrap(), local.infer(&x, 3).unwrap(), "{file}: batch of 3");
            let one: Vec<i64> = std::iter::once(1).chain(shape).collect();
            let calls: Vec<_> = x
                .chunks(d)
                .map(|r| {
                    let (client, r, one) = (client.clone(), r.to_vec(), one.clone());
                    tokio::spawn(async move { client.infer("m", &r, &one, WAIT).await.unwrap() })
                })
                .collect();
            let mut got = Vec::new();
            for c in calls {
                got.extend(c.await.unwrap());
            }
            assert!(close(&got, &local.infer(&x, 3).unwrap()), "{file}: single queries");
        }
    });
}

/// `--onnx-runtime ort` serves the same graphs with ONNX Runtime (the wheel's library): same
/// metadata, answers equal tract's to float tolerance; a library that cannot be loaded stops
/// the worker at start with a message naming it.
#[test]
fn onnx_worker_runs_onnx_runtime_when_asked() {
    let Some(fx) = onnx_fixtures() else { return };
    let lib = fx.ort_library();
    runtime().block_on(async {
        for (file, shape) in [("cnn.onnx", vec![1, 28, 28]), ("sklearn.onnx", vec![64])] {
            let path = fx.path(file);
            let args = ["--onnx-runtime", "ort", "--ort-library", lib.to_str().unwrap(), "--ort-threads", "1", "--max-batch", "4"];
            let (_w, client) = worker(&path, "m", &args).await;
            let spec = client.model_metadata("m", WAIT).await.unwrap();
            assert_eq!((spec.platform.as_str(), spec.input_shape.clone()), ("onnx", shape.clone()), "{file}");
            let local = OnnxModel::load(&path, None).unwrap();
            let x = rows(5, local.input_len());
            let full: Vec<i64> = std::iter::once(5).chain(shape).collect();
            let got = client.infer("m", &x, &full, WAIT).await.unwrap();
            assert!(close(&got, &local.infer(&x, 5).unwrap()), "{file}: ONNX Runtime {got:?}");
        }
    });
    let out = std::process::Command::new(exe())
        .args(["worker", "--model"])
        .arg(fx.path("mlp.onnx"))
        .args(["--onnx-runtime", "ort", "--ort-library", "/nonexistent/libonnxruntime.so", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot load ONNX Runtime") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let out = std::process::Command::new(exe()).args(["worker", "--model", "x.bpk", "--onnx-runtime", "ort"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("ONNX models (.onnx) only"));
}

/// `--output` picks an output; an int64 one is refused at start-up, naming it.
#[test]
fn onnx_worker_refuses_a_non_float_output() {
    let Some(fx) = onnx_fixtures() else { return };
    let out = std::process::Command::new(exe())
        .arg("worker")
        .arg("--model")
        .arg(fx.path("sklearn.onnx"))
        .args(["--output", "label", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("label: INT64") && err.contains("not float32"), "{err}");
}

/// `parm export` writes a parity model as ONNX (refusing to overwrite without --force), and
/// `parm worker` serves the file with the same outputs as the .bpk.
#[test]
fn exported_parity_model_is_served_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let bpk = write_model(dir.path(), PARITY, ModelKind::Parity);
    let onnx = dir.path().join("parity.onnx");
    let export = |force: bool| {
        let mut c = std::process::Command::new(exe());
        c.arg("export").arg("--onnx").arg(&onnx).arg("--model").arg(&bpk);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    assert!(export(false).status.success());
    let again = export(false);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert!(export(true).status.success());
    let x = rows(3, 784);
    let want = Predictor::load(&bpk).unwrap().infer(&x, 3).unwrap();
    runtime().block_on(async {
        let (_w, client) = worker(&onnx, "p", &[]).await;
        let spec = client.model_metadata("p", WAIT).await.unwrap();
        assert_eq!((spec.input_name.as_str(), spec.output_name.as_str(), spec.output_shape.as_slice()), ("input", "output", &[10][..]));
        assert!(close(&client.infer("p", &x, &[3, 784], WAIT).await.unwrap(), &want));
    });
}
