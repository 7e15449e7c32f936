//! `--deployed`: the deployed model F wherever it runs, as a [`DeployedModel`] with what parity
//! training needs to know about it.
//!
//! Three sources: a parm model (`deployed.bpk` with its `.json`), an ONNX file run in process,
//! or a model on any Open Inference Protocol server (Triton, MLServer, KServe, `parm worker`)
//! named by URL: `grpc://HOST:PORT/MODEL` or `http://HOST:PORT/MODEL`. A remote F never hands
//! parm its weights: the parity model learns from its answers.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use parm_nn::{DeployedModel, MlpConfig, ModelMeta, NnError};
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::client::InstanceClient;

/// How long one remote call may take (a batch of [`REMOTE_BATCH`] queries).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Queries per remote call: large enough to amortise a round trip, small enough for any
/// server's message limit (256 x 3 x 224 x 224 f32 = 154 MB would not be; image models get
/// fewer, see [`RemoteModel::open`]).
const REMOTE_BATCH: usize = 256;
/// Most bytes of input per remote call.
const REMOTE_BYTES: usize = 16 << 20;

/// Where `--deployed` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// parm's own weights (`.bpk`, metadata beside it).
    Parm(PathBuf),
    /// An ONNX file, run in process.
    Onnx(PathBuf),
    /// A model on an OIP server.
    Remote { protocol: Protocol, addr: String, model: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Source {
    /// Parses `--deployed`: `grpc://HOST:PORT/MODEL`, `http://HOST:PORT/MODEL`, a `.onnx`
    /// file, or a parm `.bpk` file.
    ///
    /// # Errors
    /// A URL without a model name, or a file with another extension.
    pub fn parse(s: &str) -> anyhow::Result<Source> {
        for (prefix, protocol) in [("grpc://", Protocol::Grpc), ("http://", Protocol::Http)] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (addr, model) =
                    rest.split_once('/').filter(|(a, m)| !a.is_empty() && !m.is_empty() && !m.contains('/')).with_context(|| {
                        format!("--deployed {s}: a remote model is {prefix}HOST:PORT/MODEL (one model name after the address)")
                    })?;
                return Ok(Source::Remote { protocol, addr: addr.to_string(), model: model.to_string() });
            }
        }
        let path = PathBuf::from(s);
        match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => Ok(Source::Onnx(path)),
            Some("bpk") => Ok(Source::Parm(path)),
            _ => bail!(
                "--deployed {s}: expected a parm model (.bpk), an ONNX file (.onnx), or grpc://HOST:PORT/MODEL / http://HOST:PORT/MODEL"
            ),
        }
    }
}

/// F opened from a [`Source`], with its identity for caches and the facts parity training
/// needs: per-query input shape, output width, and parm-style metadata.
pub struct Deployed {
    pub model: Box<dyn DeployedModel>,
    /// parm's metadata for a parm model; made up from the shapes for a foreign one
    /// (architecture `onnx:FILE` or `oip:URL`, no hidden layers).
    pub meta: ModelMeta,
    /// Identifies F's function: content hash of the file, or hash of the URL and the remote
    /// model's metadata.
    pub hash: u64,
    /// Per-query input shape, e.g. `[1, 28, 28]` or `[64]`.
    pub input_shape: Vec<usize>,
    /// Values per output (classes).
    pub outputs: usize,
}

impl Deployed {
    /// Opens `source`.
    ///
    /// # Errors
    /// A file that cannot be loaded; a remote model that does not answer its metadata within
    /// 30 s, or has not exactly one FP32 input and output.
    pub fn open(source: &Source) -> anyhow::Result<Deployed> {
        Self::open_on(source, &burn::tensor::Device::flex())
    }

    /// Like [`Deployed::open`], a parm model onto `device`; ONNX and remote models run where
    /// they are (tract on the CPU, the server's own device).
    pub fn open_on(source: &Source, device: &burn::tensor::Device) -> anyhow::Result<Deployed> {
        match source {
            Source::Parm(path) => {
                let (net, meta) =
                    parm_nn::train::load_net(path, device).with_context(|| format!("loading the deployed model {}", path.display()))?;
                let input_shape = meta.input_shape.iter().map(|&d| d.max(1) as usize).collect();
                let outputs = meta.classes;
                Ok(Deployed { model: Box::new(net), meta, hash: parm_nn::parity::file_hash(path)?, input_shape, outputs })
            }
            Source::Onnx(path) => {
                let onnx = parm_nn::onnx::OnnxModel::load(path, None).with_context(|| format!("loading {}", path.display()))?;
                let (input_shape, outputs) = (onnx.input_shape().to_vec(), onnx.output_len());
                let meta = foreign_meta(&format!("onnx:{}", file_name(path)), &input_shape, outputs);
                Ok(Deployed { model: Box::new(onnx), meta, hash: parm_nn::parity::file_hash(path)?, input_shape, outputs })
            }
            Source::Remote { protocol, addr, model } => {
                let remote = RemoteModel::open(*protocol, addr, model)?;
                let input_shape: Vec<usize> = remote.spec.input_shape.iter().map(|&d| d as usize).collect();
                let outputs = remote.spec.output_len();
                let url = remote.url();
                let meta = foreign_meta(&format!("oip:{url}"), &input_shape, outputs);
                let hash = hash_of(&(url, &remote.spec.version, &remote.spec.input_shape, &remote.spec.output_shape));
                Ok(Deployed { model: Box::new(remote), meta, hash, input_shape, outputs })
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Metadata for a foreign F: an MLP config with its input and output widths and no hidden
/// layers (parity training then picks its own default architecture).
fn foreign_meta(arch: &str, input_shape: &[usize], outputs: usize) -> ModelMeta {
    let mlp = MlpConfig { input: input_shape.iter().product(), hidden: vec![], classes: outputs };
    ModelMeta { arch: arch.to_string(), input_shape: input_shape.iter().map(|&d| d as i64).collect(), ..ModelMeta::untrained(mlp, "") }
}

/// F on an OIP server, called in batches over gRPC (parm's instance client) or HTTP/JSON.
pub struct RemoteModel {
    rt: tokio::runtime::Runtime,
    transport: Transport,
    addr: String,
    model: String,
    spec: ModelSpec,
    /// Rows per call: starts at what fits [`REMOTE_BYTES`], halved whenever the server refuses
    /// a batch (Triton refuses more than its `max_batch_size`, which OIP metadata does not say).
    max_batch: AtomicUsize,
}

enum Transport {
    Grpc(Box<InstanceClient>),
    Http(reqwest::Client),
}

impl RemoteModel {
    /// Connects and reads the model's metadata (input name and shape, output width).
    ///
    /// # Errors
    /// No answer within 30 s, or metadata that parm cannot serve (not one FP32 input and output
    /// with a batch dimension).
    pub fn open(protocol: Protocol, addr: &str, model: &str) -> anyhow::Result<RemoteModel> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let transport = match protocol {
            Protocol::Grpc => Transport::Grpc(Box::new(rt.block_on(async { InstanceClient::connect_lazy(addr) })?)),
            Protocol::Http => Transport::Http(reqwest::Client::builder().timeout(REMOTE_TIMEOUT).build()?),
        };
        let mut remote = RemoteModel {
            rt,
            transport,
            addr: addr.to_string(),
            model: model.to_string(),
            spec: ModelSpec::fp32(model, vec![1], vec![1]),
            max_batch: AtomicUsize::new(1),
        };
        remote.spec = remote.metadata().with_context(|| format!("reading the metadata of {}", remote.url()))?;
        remote.spec.validate().with_context(|| format!("{} cannot be protected", remote.url()))?;
        remote.max_batch = AtomicUsize::new((REMOTE_BYTES / (4 * remote.spec.input_len().max(1))).clamp(1, REMOTE_BATCH));
        Ok(remote)
    }

    /// `grpc://ADDR/MODEL` or `http://ADDR/MODEL`.
    pub fn url(&self) -> String {
        let scheme = match self.transport {
            Transport::Grpc(_) => "grpc",
            Transport::Http(_) => "http",
        };
        format!("{scheme}://{}/{}", self.addr, self.model)
    }

    fn metadata(&self) -> anyhow::Result<ModelSpec> {
        let wait = Duration::from_secs(30);
        match &self.transport {
            Transport::Grpc(c) => Ok(self.rt.block_on(c.model_metadata(&self.model, wait))?),
            Transport::Http(c) => {
                let url = format!("http://{}/v2/models/{}", self.addr, self.model);
                let body: serde_json::Value =
                    self.rt.block_on(async { c.get(&url).timeout(wait).send().await?.error_for_status()?.json().await })?;
                spec_from_json(&self.model, &body)
            }
        }
    }

    fn infer_http(&self, client: &reqwest::Client, input: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let mut shape = vec![batch as i64];
        shape.extend(&self.spec.input_shape);
        let request = serde_json::json!({
            "inputs": [{"name": self.spec.input_name, "shape": shape, "datatype": "FP32", "data": input}],
            "outputs": [{"name": self.spec.output_name}],
        });
        let url = format!("http://{}/v2/models/{}/infer", self.addr, self.model);
        let (status, body) = self.rt.block_on(async {
            let response = client.post(&url).json(&request).send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.json::<serde_json::Value>().await.unwrap_or_default()))
        })?;
        if !status.is_success() {
            bail!("{status}: {}", body["error"].as_str().unwrap_or("no error message"));
        }
        let outputs = body["outputs"].as_array().context("answer without \"outputs\"")?;
        let out =
            outputs.iter().find(|o| o["name"] == self.spec.output_name.as_str()).or(outputs.first()).context("answer with no output")?;
        let data = out["data"].as_array().context("output without \"data\"")?;
        data.iter().map(|v| v.as_f64().map(|x| x as f32).context("a non-numeric output value")).collect()
    }
}

/// A [`ModelSpec`] from OIP's JSON model metadata (`GET /v2/models/{name}`).
fn spec_from_json(model: &str, body: &serde_json::Value) -> anyhow::Result<ModelSpec> {
    let tensor = |key: &str| -> anyhow::Result<(String, Vec<i64>, String)> {
        let list = body[key].as_array().with_context(|| format!("metadata without \"{key}\""))?;
        ensure!(list.len() == 1, "{} {key} in the metadata; parm protects models with exactly one input and one output", list.len());
        let t = &list[0];
        let shape: Vec<i64> = t["shape"].as_array().context("tensor without shape")?.iter().filter_map(|d| d.as_i64()).collect();
        ensure!(shape.len() >= 2 && shape[0] < 0, "{key} shape {shape:?} has no variable batch dimension");
        Ok((
            t["name"].as_str().unwrap_or_default().to_string(),
            shape[1..].to_vec(),
            t["datatype"].as_str().unwrap_or_default().to_string(),
        ))
    };
    let (input_name, input_shape, in_type) = tensor("inputs")?;
    let (output_name, output_shape, out_type) = tensor("outputs")?;
    ensure!(in_type == "FP32" && out_type == "FP32", "datatypes {in_type} -> {out_type}; parm protects FP32 models");
    Ok(ModelSpec {
        input_name,
        input_shape,
        output_name,
        output_shape,
        version: body["versions"][0].as_str().unwrap_or("1").to_string(),
        ..ModelSpec::fp32(model, vec![], vec![])
    })
}

impl RemoteModel {
    fn call(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        let err = |e: &dyn std::fmt::Display| NnError::Invalid(format!("{}: {e}", self.url()));
        let out = match &self.transport {
            Transport::Grpc(c) => {
                let mut shape = vec![batch as i64];
                shape.extend(&self.spec.input_shape);
                self.rt.block_on(c.infer(&self.model, input, &shape, REMOTE_TIMEOUT)).map_err(|e| err(&e))?
            }
            Transport::Http(c) => self.infer_http(c, input, batch).map_err(|e| err(&e))?,
        };
        if out.len() != batch * self.spec.output_len() {
            return Err(err(&format!("{} output values for {batch} queries of {}", out.len(), self.spec.output_len())));
        }
        Ok(out)
    }
}

impl DeployedModel for RemoteModel {
    /// One call; if the server refuses a batch of several rows, the batch is halved (for this
    /// and later calls) and sent again in parts.
    fn outputs(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        match self.call(input, batch) {
            Err(e) if batch > 1 => {
                let half = batch.div_ceil(2);
                eprintln!("{e}; trying batches of {half}");
                self.max_batch.fetch_min(half, Ordering::Relaxed);
                let dim = input.len() / batch;
                let mut out = self.outputs(&input[..half * dim], half)?;
                out.extend(self.outputs(&input[half * dim..], batch - half)?);
                Ok(out)
            }
            result => result,
        }
    }

    fn max_batch(&self) -> usize {
        self.max_batch.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_parsed_or_refused_clearly() {
        assert_eq!(
            Source::parse("grpc://10.0.0.1:8001/resnet").unwrap(),
            Source::Remote { protocol: Protocol::Grpc, addr: "10.0.0.1:8001".into(), model: "resnet".into() }
        );
        assert_eq!(Source::parse("m/model.onnx").unwrap(), Source::Onnx("m/model.onnx".into()));
        assert_eq!(Source::parse("deployed.bpk").unwrap(), Source::Parm("deployed.bpk".into()));
        for bad in ["http://host:8000", "http://host:8000/", "grpc:///m", "model.pt", "http://h:1/a/b"] {
            let e = Source::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--deployed"), "{bad}: {e}");
        }
    }

    #[test]
    fn json_metadata_gives_names_and_shapes() {
        let body = serde_json::json!({"name": "m", "versions": ["3"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]});
        let spec = spec_from_json("m", &body).unwrap();
        assert_eq!((spec.input_name.as_str(), spec.input_shape.as_slice(), spec.output_len()), ("x", &[64i64][..], 10));
        assert_eq!(spec.version, "3");
        let two = serde_json::json!({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 1]}, {"name": "b", "datatype": "FP32", "shape": [-1, 1]}], "outputs": []});
        assert!(spec_from_json("m", &two).unwrap_err().to_string().contains("exactly one input"));
        let int = serde_json::json!({"inputs": [{"name": "a", "datatype": "INT64", "shape": [-1, 4]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]});
        assert!(spec_from_json("m", &int).unwrap_err().to_string().contains("FP32"));
    }
}
