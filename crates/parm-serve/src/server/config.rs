//! `parm serve --config parm.toml`: the frontend's settings in one file (example:
//! `examples/parm.toml` in the repository). Every key is optional; an unknown key is an error
//! (so typos do not pass silently). Precedence, highest first ([`Precedence`]): a flag given
//! on the command line, then the file, then the built-in default.
//!
//! ```toml
//! [server]
//! http = "127.0.0.1:8000"        # OIP HTTP + /metrics
//! grpc = "127.0.0.1:8001"        # OIP gRPC + grpc.health.v1 ("off" to disable)
//! metrics = "127.0.0.1:8002"     # extra Prometheus port (optional)
//! max_inflight = 1024            # most queries in flight; more get 503 + Retry-After
//! queue_target_ms = 5            # shed when queries wait this long for 100 ms (0: off)
//! drain_timeout_ms = 5000        # on SIGTERM: longest wait for in-flight requests
//! runtime_threads = 0            # async runtime threads (0: one current-thread runtime)
//! auth_token_file = "/etc/parm/token"  # bearer token clients must send (optional)
//! instance_auth_token_file = "/etc/parm/fleet-token"  # token sent to instances (default: auth_token_file's)
//! instance_tls_ca = "/etc/parm/fleet-ca.pem"  # reach instances over TLS (also instance_tls_cert, _key, _server_name)
//! max_body_bytes = 67108864      # largest request body after decompression (413 beyond)
//! header_read_timeout_ms = 30000 # slow clients are cut off
//! body_read_timeout_ms = 30000
//! max_connections = 10000        # per listener; more are closed as they are accepted
//! idle_timeout_ms = 120000       # a connection silent this long is closed
//!
//! [model]
//! name = "fashion-mnist"         # what clients call the model
//! deployed_model = "deployed"    # its name on the deployed instances
//! parity_model = "parity-k2-addition"   # with parities = R: one name per parity index
//! deployed = ["127.0.0.1:9001", "127.0.0.1:9002"]
//! parity = ["127.0.0.1:9003"]    # with parities = R: one list per parity index, [["a"], ["b"]]
//! k = 2
//! encoder = "addition"
//! code = "parity"                # or "berrut" (training-free; needs no parity model)
//! parities = 1                   # parity models per coding group (the r-parity linear code)
//! extra = 1                      # berrut: blended queries per group ...
//! extra_instances = []           # ... run by the deployed model on these instances
//! redundancy = "none"            # or replication / hedged (uncoded baselines)
//! lazy_parity = false            # parity queries only for groups with a straggler
//! straggler_factor = 2.0         # straggler threshold = factor x median instance latency
//! straggler_min_us = 1000        # ... but at least this
//! batch_coding = false           # true: a batch request is coded as one block (crate::coded)
//! dispatch_max_batch = 1         # > 1: batch queued queries per instance (crate::upstream::dispatch)
//! dispatch_max_in_flight = 1     # requests outstanding per instance before queries batch
//! check_outputs = false          # check each coding group against its code (crate::coded::check) ...
//! check_threshold = 2.5          # ... flag a group whose syndrome is this x the running median
//! check_window = 100             # ... over each instance's last checks,
//! eject_rate = 0.05              # ... eject one blamed this often
//! eject_for_s = 30.0             # ... for this long
//! check_any_change = false      # ... true: flag by the syndrome alone, not only disputed top-1 classes
//! instance_auth_token_file = "..." # this model's instances: their token and TLS, instead of [server]'s
//! instance_tls_ca = "..."        # (also instance_tls_cert, instance_tls_key, instance_tls_server_name)
//!
//! [deadlines]                    # milliseconds
//! group_timeout_ms = 5
//! decode_grace_ms = 2            # default: the straggler threshold
//! instance_timeout_ms = 5000
//!
//! [preprocess]                   # scale, mean, std: applied to every query (the CLI turns it into a server::api::Transform)
//! ```
//!
//! A model repository (`parm serve --model-repository DIR`, [`load_repository`]) holds one
//! such file per model, `DIR/NAME/config.toml`, with `[model]`, `[deadlines]` and
//! `[preprocess]` and no `[server]`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub deadlines: DeadlineSection,
    /// `[preprocess]`: the model's input preprocessing, applied to each query by the CLI's transform and shown in model
    /// metadata and configuration.
    pub preprocess: Option<Preprocess>,
}

/// The `[preprocess]` table (keys of `parm_data::Preprocess`) of a model's config.
pub type Preprocess = toml::Table;

/// One model of a model repository (see [`load_repository`]): folder `DIR/NAME/` holding
/// `config.toml`.
#[derive(Debug, PartialEq)]
pub struct RepositoryModel {
    /// The folder's name: the name clients use.
    pub name: String,
    /// Its `config.toml`.
    pub path: PathBuf,
    /// The parsed file: `[model]`, `[deadlines]` and `[preprocess]`.
    pub file: ServeFile,
}

/// The file each model folder of a repository holds.
pub const MODEL_CONFIG: &str = "config.toml";

/// Reads a model repository in Triton's layout (`parm serve --model-repository DIR`): one
/// folder per model, `DIR/NAME/config.toml`, read as a [`ServeFile`] without `[server]` (the
/// server's settings are the command line's and `--config`'s). The model is served as NAME;
/// `model.name`, if given, must be NAME. Folders without `config.toml` (and files) are skipped,
/// with a log line. Models come sorted by name.
///
/// Errors: `dir` cannot be read; a `config.toml` that [`ServeFile::load`] refuses, has a
/// `[server]` table, names another model or no deployed instances (each naming the file); a
/// folder name that is not UTF-8; no model at all.
pub fn load_repository(dir: &Path) -> anyhow::Result<Vec<RepositoryModel>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the model repository {}", dir.display()))?;
    let mut folders = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading the model repository {}", dir.display()))?;
    folders.sort();
    let mut models = Vec::new();
    for folder in folders.into_iter().filter(|f| f.is_dir()) {
        let path = folder.join(MODEL_CONFIG);
        if !path.is_file() {
            tracing::info!("model repository: skipping {}: no {MODEL_CONFIG}", folder.display());
            continue;
        }
        let name =
            folder.file_name().and_then(|n| n.to_str()).with_context(|| format!("{}: the folder name is not UTF-8", folder.display()))?;
        let file = ServeFile::load(&path)?;
        let at = path.display();
        anyhow::ensure!(
            file.server == ServerSection::default(),
            "{at}: [server] belongs in --config or on the command line, not in a model's config"
        );
        anyhow::ensure!(
            file.model.name.as_deref().is_none_or(|n| n == name),
            "{at}: model.name must be the folder's name '{name}' (or left out)"
        );
        anyhow::ensure!(file.model.deployed.is_some(), "{at}: model.deployed is missing (the deployed-model instances)");
        models.push(RepositoryModel { name: name.to_string(), path, file });
    }
    anyhow::ensure!(
        !models.is_empty(),
        "no model in the repository {} (each model is a folder NAME holding {MODEL_CONFIG})",
        dir.display()
    );
    Ok(models)
}

/// `[server]`: listen addresses.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub http: Option<String>,
    pub grpc: Option<String>,
    pub metrics: Option<String>,
    /// Most queries in flight at the frontend (see [`crate::server::admission`]).
    pub max_inflight: Option<usize>,
    /// Queueing delay that starts shedding (ms; 0: off; see [`crate::server::admission`]).
    pub queue_target_ms: Option<f64>,
    /// How long the queueing delay must last (ms).
    pub queue_interval_ms: Option<f64>,
    /// Longest drain of in-flight requests after SIGTERM (ms, see [`crate::server::listen`]).
    pub drain_timeout_ms: Option<u64>,
    /// Threads of the frontend's async runtime (0: current-thread).
    pub runtime_threads: Option<usize>,
    /// File holding the bearer token clients must send (see [`crate::oip::security`]).
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Largest request body after decompression (bytes).
    pub max_body_bytes: Option<usize>,
    /// Time a client has to send a request's headers (ms).
    pub header_read_timeout_ms: Option<u64>,
    /// Time a client has to send a request's body (ms).
    pub body_read_timeout_ms: Option<u64>,
    /// Most connections open at once per listener (see [`crate::server::conn`]).
    pub max_connections: Option<usize>,
    /// A connection that moves no byte for this long is closed (ms).
    pub idle_timeout_ms: Option<u64>,
    /// TLS on the listeners: certificate chain, key, and the CA of client certificates (PEM
    /// files; see [`crate::oip::tls`]).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// TLS to the instances: their CA, a client certificate and key, the name their
    /// certificates are checked against.
    pub instance_tls_ca: Option<std::path::PathBuf>,
    pub instance_tls_cert: Option<std::path::PathBuf>,
    pub instance_tls_key: Option<std::path::PathBuf>,
    pub instance_tls_server_name: Option<String>,
    /// File holding the bearer token sent to the instances (default: `auth_token_file`'s).
    pub instance_auth_token_file: Option<std::path::PathBuf>,
}

/// `[model]`: the served model, its instances and its code.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: Option<String>,
    pub deployed_model: Option<String>,
    /// The parity model's name on its instances; with `parities` >= 2, one name per parity
    /// index (`["p0", "p1"]`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub parity_model: Option<Vec<String>>,
    pub deployed: Option<Vec<String>>,
    /// Parity-model instances: one list (`["a:1", "a:2"]`), or one list per parity index
    /// with `parities` >= 2 (`[["a:1"], ["b:1"]]`).
    #[serde(default, deserialize_with = "lists")]
    pub parity: Option<Vec<Vec<String>>>,
    /// Parity models per coding group (`parm serve --parities`, see
    /// [`crate::coded::Code::Parities`]).
    pub parities: Option<usize>,
    /// `"parity"` (learned parity models) or `"berrut"` (see [`crate::coded::Code`]).
    pub code: Option<String>,
    /// The Berrut code's blended queries per group (`--extra`).
    pub extra: Option<usize>,
    /// Instances of the deployed model that run the Berrut code's blended queries.
    pub extra_instances: Option<Vec<String>>,
    pub k: Option<usize>,
    pub encoder: Option<String>,
    pub redundancy: Option<String>,
    /// Parity queries only for coding groups with a straggler (see [`crate::coded::policy`]).
    pub lazy_parity: Option<bool>,
    /// Straggler threshold = this x the median deployed-instance latency.
    pub straggler_factor: Option<f64>,
    /// Floor of the straggler threshold (us).
    pub straggler_min_us: Option<u64>,
    /// Code a batch request as one (`parm serve --batch-coding`, see [`crate::coded::Frontend::predict_block`]).
    pub batch_coding: Option<bool>,
    /// Most queries per request to an instance (see [`crate::upstream::dispatch`]).
    pub dispatch_max_batch: Option<usize>,
    /// Requests outstanding per instance before queries wait and batch.
    pub dispatch_max_in_flight: Option<usize>,
    /// How often instance entries that are DNS names or files are re-resolved (ms; see
    /// [`crate::upstream::discovery`]).
    pub discovery_interval_ms: Option<u64>,
    /// Output checks (`--check-outputs` and its settings; see [`crate::coded::check`]).
    pub check_outputs: Option<bool>,
    pub check_threshold: Option<f32>,
    pub check_window: Option<usize>,
    pub eject_rate: Option<f64>,
    pub check_any_change: Option<bool>,
    pub eject_for_s: Option<f64>,
    /// This model's instances: the token sent to them and TLS to them, instead of
    /// `[server]`'s (a repository may serve models from fleets with different credentials).
    pub instance_auth_token_file: Option<std::path::PathBuf>,
    pub instance_tls_ca: Option<std::path::PathBuf>,
    pub instance_tls_cert: Option<std::path::PathBuf>,
    pub instance_tls_key: Option<std::path::PathBuf>,
    pub instance_tls_server_name: Option<String>,
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// A list of strings (one list) or a list of lists, as a list of lists.
fn lists<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<String>>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lists {
        One(Vec<String>),
        Many(Vec<Vec<String>>),
    }
    Ok(Some(match Lists::deserialize(d)? {
        Lists::One(v) if v.is_empty() => Vec::new(),
        Lists::One(v) => vec![v],
        Lists::Many(v) => v,
    }))
}

/// `[deadlines]`, in milliseconds.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadlineSection {
    pub group_timeout_ms: Option<u64>,
    pub decode_grace_ms: Option<u64>,
    pub instance_timeout_ms: Option<u64>,
}

/// The precedence of `parm serve`'s settings, as users expect it: a flag given on the command
/// line beats the config file, which beats the built-in default (the flag's default value).
pub struct Precedence<F: Fn(&str) -> bool> {
    /// True if the flag with this id (the clap argument id, e.g. `"group_timeout_ms"`) was
    /// given on the command line.
    pub flag_given: F,
}

impl<F: Fn(&str) -> bool> Precedence<F> {
    /// Settles one setting: `value` holds the flag's value (its default when it was not
    /// given), `file` the config file's; the file's replaces it only if the flag was not given.
    pub fn apply<T>(&self, flag: &str, value: &mut T, file: Option<T>) {
        if let Some(v) = file.filter(|_| !(self.flag_given)(flag)) {
            *value = v;
        }
    }
}

impl ServeFile {
    /// Reads and parses `path`.
    ///
    /// Errors: the file cannot be read, is not TOML, has an unknown key or a wrong type, or
    /// names an empty `model.deployed` list or `model.k = 0`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses TOML text (see [`Self::load`]).
    ///
    /// Errors: as [`Self::load`].
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: Self = toml::from_str(text)?;
        anyhow::ensure!(file.model.deployed.as_ref().is_none_or(|d| !d.is_empty()), "model.deployed is empty");
        anyhow::ensure!(file.model.k != Some(0), "model.k must be at least 1");
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../../examples/parm.toml");
        let f = ServeFile::parse(text).unwrap();
        assert_eq!(f.model.k, Some(2));
        assert_eq!(f.model.deployed.as_ref().map(Vec::len), Some(2));
        assert_eq!(f.server.grpc.as_deref(), Some("127.0.0.1:8001"));
        assert_eq!(f.deadlines.group_timeout_ms, Some(5));
        assert_eq!((f.server.max_inflight, f.server.drain_timeout_ms), (Some(1024), Some(5000)));
    }

    #[test]
    fn a_given_flag_beats_the_file_which_beats_the_default() {
        let p = Precedence { flag_given: |id: &str| id == "k" };
        let (mut k, mut timeout, mut grace) = (3, 5, 2);
        p.apply("k", &mut k, Some(2)); // given on the command line: stays
        p.apply("group_timeout_ms", &mut timeout, Some(9)); // not given: the file's
        p.apply("decode_grace_ms", &mut grace, None); // neither: the default
        assert_eq!((k, timeout, grace), (3, 9, 2));
    }

    #[test]
    fn parity_lists_and_names_take_either_form() {
        let f = ServeFile::parse("[model]\nparity = [\"a:1\", \"a:2\"]\nparity_model = \"p\"").unwrap();
        assert_eq!(f.model.parity, Some(vec![vec!["a:1".to_string(), "a:2".to_string()]]));
        assert_eq!(f.model.parity_model, Some(vec!["p".to_string()]));
        let f = ServeFile::parse("[model]\nparities = 2\nparity = [[\"a:1\"], [\"b:1\"]]\nparity_model = [\"p0\", \"p1\"]").unwrap();
        assert_eq!(f.model.parity, Some(vec![vec!["a:1".to_string()], vec!["b:1".to_string()]]));
        assert_eq!((f.model.parities, f.model.parity_model.map(|v| v.len())), (Some(2), Some(2)));
        assert!(ServeFile::parse("[model]\nparity = [[\"a\"], \"b\"]").is_err());
    }

    #[test]
    fn bad_files_are_rejected_with_reasons() {
        assert_eq!(ServeFile::parse("").unwrap(), ServeFile::default());
        for bad in ["[model]\nkk = 2", "[model]\nk = \"two\"", "[model]\nk = 0", "[model]\ndeployed = []", "[other]\nx = 1", "not toml ="] {
            assert!(ServeFile::parse(bad).is_err(), "{bad}");
        }
    }
}
