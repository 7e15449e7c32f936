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
/// The decode grace (`--decode-grace-ms`), capped at the straggler threshold.
pub const DEFAULT_DECODE_GRACE: Duration = Duration::from_millis(2);
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
}

/// How the frontend is wired. Build it with [`FrontendConfig::new`] and change what differs
/// from the defaults with struct update syntax.
#[derive(Clone)]
pub struct FrontendConfig {
    /// What clients see: name, input and output shapes.
    pub spec: ModelSpec,
    /// Deployed-model instances and the model name they serve.
    pub deployed: Vec<String>,
    pub deployed_model: String,
    /// Parity-model instances (empty: no redundancy) and the model name they serve.
    pub parity: Vec<String>,
    pub parity_model: String,
    /// Builds the parity query of a coding group; its `k()` is the group size.
    pub encoder: Arc<dyn Encoder>,
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
    /// At most the straggler threshold (see [`crate::coded::policy::decode_grace`]).
    pub decode_grace: Duration,
    /// How queries are sent to deployed instances (replication and hedging are baselines;
    /// use them without parity instances).
    pub redundancy: Redundancy,
    /// Batching of queries to each instance (default: none, one request per query).
    pub dispatch: DispatchBatching,
    /// A request carrying a batch of rows is coded as one member of a coding group (one
    /// deployed request per batch, one parity request per k batches; `--batch-coding`)
    /// instead of row by row.
    pub batch_coding: bool,
}

impl FrontendConfig {
    /// Serving `spec` from the `deployed` instances (model name "deployed"), without parity
    /// instances, everything else at its default: addition encoder with k = 2 (parity model
    /// "parity-k2-addition"), group timeout 5 ms, instance timeout 5 s, decode grace 2 ms,
    /// ParM's eager parity, no redundancy, no dispatch batching, rows coded one by one.
    pub fn new(spec: ModelSpec, deployed: Vec<String>) -> Self {
        Self {
            spec,
            deployed,
            deployed_model: "deployed".into(),
            parity: Vec::new(),
            parity_model: "parity-k2-addition".into(),
            encoder: Arc::new(AdditionEncoder::new(2).expect("k = 2 is valid")),
            group_timeout: DEFAULT_GROUP_TIMEOUT,
            straggler: StragglerPolicy::default(),
            instance_timeout: DEFAULT_INSTANCE_TIMEOUT,
            decode_grace: DEFAULT_DECODE_GRACE,
            redundancy: Redundancy::None,
            dispatch: DispatchBatching::default(),
            batch_coding: false,
        }
    }

    /// Checks the settings that do not depend on the instances.
    ///
    /// Errors: no deployed instances, k = 0, a bad straggler policy or dispatch batching.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deployed.is_empty() {
            return Err(ConfigError::NoDeployedInstances);
        }
        if self.encoder.k() < 1 {
            return Err(ConfigError::ZeroK);
        }
        self.straggler.validate()?;
        Ok(self.dispatch.validate()?)
    }
}
