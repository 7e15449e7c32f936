//! What the process-level tests share: small random models written to disk, `parm serve`
//! started as a child process, and one OIP HTTP inference call.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use burn::tensor::Device;
use parm_nn::mlp::Init;
use parm_nn::train::save_model;
use parm_nn::{MlpConfig, ModelKind, ModelMeta};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const DEPLOYED: &str = "deployed";
pub const PARITY: &str = "parity-k2-addition";

/// The `parm` binary under test.
pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_parm"))
}

/// Writes a randomly initialised MLP (784-200-100-10) and its metadata as `dir/name.{bpk,json}`
/// (no training, no dataset: a model in milliseconds; the arithmetic is what is checked).
pub fn write_model(dir: &Path, name: &str, kind: ModelKind) -> PathBuf {
    let cfg = MlpConfig::default();
    let model = cfg.init(Init::Default, &Device::flex());
    let parity = kind == ModelKind::Parity;
    let meta = ModelMeta {
        kind,
        k: parity.then_some(2),
        encoder: parity.then(|| "addition".to_string()),
        ..ModelMeta::untrained(cfg.clone(), "random")
    };
    save_model(&model, &meta, dir, name).expect("save model");
    dir.join(format!("{name}.bpk"))
}

/// A `parm serve` child process and its HTTP address; SIGKILLed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: String,
}

impl Served {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("frontend still running") as i32
    }
}

/// Starts `parm serve --listen 127.0.0.1:0 --grpc-listen off ARGS...` and waits (60 s at
/// most) for the address it prints.
pub async fn start_serve(args: &[&str]) -> Served {
    let mut cmd = Command::new(exe());
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start parm serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("parm serve printed no address within 60 s")
        .expect("read parm serve stdout")
        .expect("parm serve exited before listening");
    let addr = line.strip_prefix("listening on ").expect("first line 'listening on ADDR'").trim().to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served { child, addr }
}

/// Sends a signal to a process the test started.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of this test; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The OIP JSON body of one query.
pub fn infer_body(id: &str, input: &[f32]) -> Value {
    json!({"id": id, "inputs": [{"name": "input", "shape": [1, input.len()], "datatype": "FP32", "data": input}]})
}

/// Output data of a 200 answer as f32.
pub fn output(body: &Value) -> Vec<f32> {
    body["outputs"][0]["data"].as_array().expect("outputs[0].data").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// Element-wise closeness: |got - want| <= 1e-3 (1 + |want|).
pub fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-3 * (1.0 + w.abs()))
}

/// Writes a randomly initialised collage model for coding groups of `k` 28x28 queries (parm's
/// cell-wise model: the k queries tiled into one input, `k x 10` outputs, block j for cell j)
/// as `dir/name.{bpk,json}`.
pub fn write_collage_model(dir: &Path, name: &str, k: usize) -> PathBuf {
    let mlp = MlpConfig { input: 784, hidden: vec![200, 100], classes: k * 10 };
    let cfg = parm_nn::NetConfig::CellMlp { k, channels: 1, rows: 28, cols: 28, mlp: mlp.clone() };
    let model = cfg.init(Init::Default, &Device::flex());
    let meta = ModelMeta {
        kind: ModelKind::Parity,
        arch: cfg.name(),
        classes: 10,
        k: Some(k),
        encoder: Some("concatenation".into()),
        ..ModelMeta::untrained(mlp, "random")
    };
    parm_nn::train::save_net(&model, &meta, dir, name).expect("save collage model");
    dir.join(format!("{name}.bpk"))
}
