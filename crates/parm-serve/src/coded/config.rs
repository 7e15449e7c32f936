//! [`FrontendConfig`]: how the coded path is wired, and its defaults.

use std::sync::Arc;
use std::time::Duration;

use parm_codes::{AdditionEncoder, Encoder};

use crate::coded::policy::StragglerPolicy;
use crate::oip::ModelSpec;
use crate::upstream::dispatch::{BadDispatch, DispatchBatching};
use crate::upstream::redundancy::Redundancy;

/// A partly filled coding group is sealed after this long at most (ms; `--group-timeout-ms`).
pub const DEFAULT_GROUP_TIMEOUT: Duration = Duration::from_millis(5);
/// An instance RPC counts as failed after this long (`--instance-timeout-ms`).
pub const DEFAULT_INSTANCE_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`FrontendConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("at least one deployed-model instance is needed")]
    NoDeployedInstances,
    #[error("k must be at least 1")]
    ZeroK,
    #[error("straggler factor must be a positive number, got {0}")]
    StragglerFactor(f64),
    #[error("straggler min ({min:?}) exceeds max ({max:?})")]
    StragglerBounds { min: Duration, max: Duration },
    #[error(transparent)]
    Dispatch(#[from] BadDispatch),
    #[error("{0} parities need the addition encoder (parity 0 of the r-parity linear code is the addition code), got '{1}'")]
    ParitiesNeedAddition(usize, &'static str),
    #[error("parity {0} has no instances")]
    NoParityInstances(usize),
    #[error("the Berrut code needs S >= 1 extra queries per group and instances of the deployed model to run them")]
    BerrutWithoutExtra,
    #[error(transparent)]
    Instances(#[from] crate::upstream::discovery::DiscoveryError),
    #[error("the discovery interval must be above 0")]
    ZeroDiscoveryInterval,
    #[error("output checks: {0}")]
    Checks(String),
}

/// Which code protects each coding group, and what serves its redundant queries (the
/// coded path is the same for every code: see [`crate::coded`]).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Code {
    /// ParM's learned parity model (SOSP 2019 §3): `encoder` builds one parity query per
    /// group, run by `parity_model` on the `parity` instances; one unavailable prediction of
    /// a group is decoded.
    #[default]
    Parity,
    /// r = 1 + `further.len()` learned parity models per group, over the Vandermonde
    /// [`parm_codes::LinearCode`] (ParM §3/§4 generalised to r parities; its parity 0 is the
    /// addition code, so `encoder` must be addition): parity 0 runs on `parity`
    /// (`parity_model`), parity l >= 1 on `further[l - 1]`. Any r or fewer unavailable
    /// predictions of a group are decoded, as soon as as many parity outputs are in.
    Parities { further: Vec<ParityInstances> },
    /// The systematic Berrut code ([`parm_codes::BerrutCode`]; ApproxIFER, arXiv 2109.09868,
    /// made systematic), training-free: the k queries are served exactly by the deployed
    /// instances, `s` Berrut-blended queries per group run the deployed model on the `parity`
    /// instances (`parity_model` is not used), and up to `s` unavailable predictions are
    /// interpolated from the outputs that are in.
    Berrut { s: usize },
}

/// The instances of one parity index and the parity model they serve.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityInstances {
    pub instances: Vec<String>,
    pub model: String,
}

/// How the frontend is wired. Build it with [`FrontendConfig::new`] and change what differs
/// from the defaults with struct update syntax.
#[derive(Clone)]
pub struct FrontendConfig {
    /// What clients see: name, input and output shapes.
    pub spec: ModelSpec,
    /// Deployed-model instances and the model name they serve. Each entry is a
    /// [`crate::upstream::discovery::Source`]: `host:port`, `dns://NAME:PORT` or `file:PATH`,
    /// or names an in-process instance, `inproc:PATH` (see [`Self::inproc`]); so are the
    /// parity instances'.
    pub deployed: Vec<String>,
    pub deployed_model: String,
    /// Parity-model instances (empty: no redundancy) and the model name they serve: ParM's
    /// one parity, or parity 0 of several; with the Berrut code, the instances that run the
    /// deployed model on blended queries (see [`Code`]).
    pub parity: Vec<String>,
    pub parity_model: String,
    /// Builds the parity query of a coding group; its `k()` is the group size (the only
    /// thing used of it with several parities or the Berrut code, see [`Code`]).
    pub encoder: Arc<dyn Encoder>,
    /// The code (default: ParM's one parity).
    pub code: Code,
    /// A partly filled coding group is sealed (and padded) after at most this long (ms scale);
    /// sooner when the straggler threshold is shorter.
    pub group_timeout: Duration,
    /// Straggler threshold and when parity queries are sent (default: ParM's eager dispatch
    /// with an adaptive group timeout).
    pub straggler: StragglerPolicy,
    /// Longest wait for one instance RPC before it counts as failed.
    pub instance_timeout: Duration,
    /// A reconstruction is released no earlier than this long after its original was sent,
    /// so a healthy original that is about to arrive wins (zero: ParM's pure eager decoding).
    /// At most the straggler threshold; `None` (the default): the straggler threshold itself
    /// (see [`crate::coded::policy::decode_grace`]).
    pub decode_grace: Option<Duration>,
    /// How queries are sent to deployed instances (replication and hedging are baselines;
    /// use them without parity instances).
    pub redundancy: Redundancy,
    /// Batching of queries to each instance (default: none, one request per query).
    pub dispatch: DispatchBatching,
    /// A request carrying a batch of rows is coded as one member of a coding group (one
    /// deployed request per batch, one parity request per k batches; `--batch-coding`)
    /// instead of row by row.
    pub batch_coding: bool,
    /// How often instance lists with DNS names or files in them are re-resolved (see
    /// [`crate::upstream::discovery`]).
    pub discovery_interval: Duration,
    /// Check every complete coding group against its code and take instances whose outputs
    /// keep disagreeing out of rotation ([`crate::coded::check`]; `--check-outputs`). `None`:
    /// off (the default).
    pub checks: Option<crate::coded::check::OutputChecks>,
    /// How this frontend's clients reach its instances (token, TLS; default: plain text, no
    /// token). Used by its coding groups, its discovery and its health probes.
    pub upstream: crate::upstream::client::ClientOptions,
    /// The in-process instances, by the entry that names them (`inproc:PATH`, see
    /// [`crate::instance::local`]); every such entry of the instance lists must have one
    /// (default: none).
    pub inproc: std::collections::BTreeMap<String, Arc<dyn crate::upstream::Instance>>,
}

impl FrontendConfig {
    /// Serving `spec` from the `deployed` instances (model name "deployed"), without parity
    /// instances, everything else at its default: addition encoder with k = 2 (parity model
    /// "parity-k2-addition"), group timeout 5 ms, instance timeout 5 s, decode grace = the straggler threshold,
    /// ParM's eager parity, no redundancy, no dispatch batching, rows coded one by one,
    /// instance discovery every 2 s.
    pub fn new(spec: ModelSpec, deployed: Vec<String>) -> Self {
        Self {
            spec,
            deployed,
            deployed_model: "deployed".into(),
            parity: Vec::new(),
            parity_model: "parity-k2-addition".into(),
            encoder: Arc::new(AdditionEncoder::new(2).expect("k = 2 is valid")),
            code: Code::Parity,
            group_timeout: DEFAULT_GROUP_TIMEOUT,
            straggler: StragglerPolicy::default(),
            instance_timeout: DEFAULT_INSTANCE_TIMEOUT,
            decode_grace: None,
            redundancy: Redundancy::None,
            dispatch: DispatchBatching::default(),
            batch_coding: false,
            discovery_interval: crate::upstream::discovery::DEFAULT_DISCOVERY_INTERVAL,
            checks: None,
            upstream: Default::default(),
            inproc: Default::default(),
        }
    }

    /// Checks the settings that do not depend on the instances.
    ///
    /// Errors: no deployed instances, an instance entry that is not a discovery source, a
    /// zero discovery interval, k = 0, a bad straggler policy or dispatch batching,
    /// several parities without the addition encoder or with a parity that has no
    /// instances, the Berrut code without extra queries or instances.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deployed.is_empty() {
            return Err(ConfigError::NoDeployedInstances);
        }
        if self.encoder.k() < 1 {
            return Err(ConfigError::ZeroK);
        }
        match &self.code {
            Code::Parity => {}
            Code::Parities { further } => {
                let r = further.len() + 1;
                if self.encoder.name() != "addition" {
                    return Err(ConfigError::ParitiesNeedAddition(r, self.encoder.name()));
                }
                if let Some(l) = self.parity_sets().iter().position(|p| p.instances.is_empty()) {
                    return Err(ConfigError::NoParityInstances(l));
                }
            }
            Code::Berrut { s } if *s == 0 || self.parity.is_empty() => return Err(ConfigError::BerrutWithoutExtra),
            Code::Berrut { .. } => {}
        }
        for set in std::iter::once(&self.deployed).chain(self.parity_sets().iter().map(|p| &p.instances)) {
            crate::upstream::discovery::sources(set)?;
        }
        if self.discovery_interval.is_zero() {
            return Err(ConfigError::ZeroDiscoveryInterval);
        }
        if let Some(checks) = &self.checks {
            checks.validate().map_err(ConfigError::Checks)?;
            if self.parity_sets().is_empty() {
                return Err(ConfigError::Checks(
                    "they need parity instances (the code's redundancy is what the outputs are checked against)".into(),
                ));
            }
            if self.encoder.name() == "concatenation" {
                return Err(ConfigError::Checks(
                    "a collage (concatenation) parity model answers each query from its own cell; its outputs are not checked".into(),
                ));
            }
            if matches!(self.code, Code::Berrut { .. }) {
                return Err(ConfigError::Checks(
                    "the Berrut code's redundant outputs are not linear in the predictions; use --parities R".into(),
                ));
            }
        }
        self.straggler.validate()?;
        Ok(self.dispatch.validate()?)
    }

    /// The pools of redundant instances, each with the model it runs: parity 0 (or the
    /// Berrut code's extra instances, running the deployed model), then parities 1..r-1.
    /// Empty without parity instances.
    pub fn parity_sets(&self) -> Vec<ParityInstances> {
        if self.parity.is_empty() && !matches!(self.code, Code::Parities { .. }) {
            return Vec::new();
        }
        let model = match self.code {
            Code::Berrut { .. } => self.deployed_model.clone(),
            _ => self.parity_model.clone(),
        };
        let mut sets = vec![ParityInstances { instances: self.parity.clone(), model }];
        if let Code::Parities { further } = &self.code {
            sets.extend(further.iter().cloned());
        }
        sets
    }
}
