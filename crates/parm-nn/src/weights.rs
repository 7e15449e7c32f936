//! Loading weights safely: a model file is checked before any of it is used.
//!
//! A weights file (`.bpk`, burnpack) and its metadata (`.json`) come from disk, perhaps from
//! another machine; a truncated copy, a file for another architecture, or a corrupted one must
//! give a clear error at load time, never a panic or a huge allocation, and never a model that
//! fails later while serving. In order:
//!
//! 1. the metadata's architecture must parse ([`NetConfig::parse`]) and its sizes must be
//!    sane ([`check_config`]: bounded layer widths and parameter count), *before* a model of
//!    that size is allocated;
//! 2. the file must be at least as large as the parameters it must hold (4 bytes each);
//! 3. burn checks names and shapes of every tensor (missing, unused or mis-shaped tensors are
//!    errors);
//! 4. every parameter must be FP32 (burn would otherwise adopt the file's dtype silently) and
//!    finite.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::mlp::Init;
use crate::{MlpConfig, ModelMeta, Net, NetConfig, NnError};

/// Largest number of parameters a model may have (2^28 FP32 values: 1 GiB).
pub const MAX_PARAMS: u64 = 1 << 28;
/// Largest width of any layer, input or number of classes.
pub const MAX_WIDTH: usize = 1 << 24;
/// Most hidden layers of an MLP.
pub const MAX_LAYERS: usize = 64;

fn invalid(origin: &str, msg: impl std::fmt::Display) -> NnError {
    NnError::Weights { path: origin.to_string(), message: msg.to_string() }
}

fn mlp_params(c: &MlpConfig) -> Option<u64> {
    let mut sizes = vec![c.input as u64];
    sizes.extend(c.hidden.iter().map(|&h| h as u64));
    sizes.push(c.classes as u64);
    sizes.windows(2).try_fold(0u64, |acc, w| acc.checked_add(w[0].checked_mul(w[1])?.checked_add(w[1])?))
}

/// Checks the architecture the metadata describes is one parm can build at a sane size.
///
/// Errors: an unknown architecture, a zero or oversized width, too many layers, or more than
/// [`MAX_PARAMS`] parameters (for MLPs, counted exactly before anything is allocated).
pub fn check_config(meta: &ModelMeta, origin: &str) -> Result<NetConfig, NnError> {
    let m = &meta.mlp;
    let widths_ok = m.input >= 1 && m.classes >= 1 && m.hidden.iter().all(|&h| h >= 1);
    let bounded = m.input <= MAX_WIDTH && m.classes <= MAX_WIDTH && m.hidden.iter().all(|&h| h <= MAX_WIDTH);
    if !widths_ok || !bounded || m.hidden.len() > MAX_LAYERS {
        return Err(invalid(
            origin,
            format!(
                "metadata describes layer sizes {} -> {:?} -> {} (each must be 1..={MAX_WIDTH}, at most {MAX_LAYERS} hidden layers)",
                m.input, m.hidden, m.classes
            ),
        ));
    }
    let cfg =
        NetConfig::parse(&meta.arch, m).ok_or_else(|| invalid(origin, format!("unknown or inconsistent architecture {:?}", meta.arch)))?;
    let params = match &cfg {
        NetConfig::Mlp(c) => mlp_params(c),
        // The shared MLP of a cell-wise model is smaller than the whole interface's MLP.
        NetConfig::CellMlp { mlp, .. } => mlp_params(mlp),
        // Fixed convolutional stacks: their size grows with channels, width and classes
        // only; bound those so the model stays small.
        NetConfig::LeNet { channels, side, classes, .. } => (*channels <= 64 && *side <= 1024 && *classes <= 1 << 16).then_some(0),
        NetConfig::ResNet18 { channels, side, classes, width, .. } => {
            (*channels <= 64 && *side <= 1024 && *classes <= 1 << 16 && *width <= 256).then_some(0)
        }
    };
    match params {
        Some(p) if p <= MAX_PARAMS => Ok(cfg),
        _ => Err(invalid(origin, format!("architecture {:?} is too large (more than {MAX_PARAMS} parameters)", meta.arch))),
    }
}

/// Builds the model `meta` describes and loads `bytes` (a burnpack file's content) into it,
/// with every check of the module docs. `origin` names the file in errors.
///
/// Errors: [`NnError::Weights`] for any failed check, naming `origin` and the problem.
pub fn load_net_bytes(meta: &ModelMeta, bytes: Vec<u8>, device: &Device, origin: &str) -> Result<Net, NnError> {
    let cfg = check_config(meta, origin)?;
    let net = cfg.init(Init::Default, device);
    let params = match &net {
        Net::Mlp(m) => m.num_params(),
        Net::LeNet(m) => m.num_params(),
        Net::ResNet18(m) => m.num_params(),
        Net::CellMlp(m) => m.num_params(),
    } as u64;
    if (bytes.len() as u64) < params.saturating_mul(4) {
        return Err(invalid(
            origin,
            format!(
                "file has {} bytes, but architecture {} has {params} FP32 parameters ({} bytes): truncated or not this model's weights",
                bytes.len(),
                meta.arch,
                params * 4
            ),
        ));
    }
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| invalid(origin, format!("not a valid burnpack file: {e}")))?
        .validate(true)
        .allow_partial(false)
        .allow_unused(false);
    let werr = |e: burn::store::RecordError| invalid(origin, e);
    let net = match net {
        Net::Mlp(m) => Net::Mlp(m.try_load_record(record).map_err(werr)?),
        Net::LeNet(m) => Net::LeNet(m.try_load_record(record).map_err(werr)?),
        Net::ResNet18(m) => Net::ResNet18(m.try_load_record(record).map_err(werr)?),
        Net::CellMlp(m) => Net::CellMlp(m.try_load_record(record).map_err(werr)?),
    };
    let mut check = ParamCheck::default();
    match &net {
        Net::Mlp(m) => m.visit(&mut check),
        Net::LeNet(m) => m.visit(&mut check),
        Net::ResNet18(m) => m.visit(&mut check),
        Net::CellMlp(m) => m.visit(&mut check),
    }
    if let Some(problem) = check.problem {
        return Err(invalid(origin, problem));
    }
    Ok(net)
}

/// Reads `weights` and loads it with [`load_net_bytes`].
///
/// Errors: the file cannot be read, or those of [`load_net_bytes`].
pub fn load_net_file(meta: &ModelMeta, weights: &Path, device: &Device) -> Result<Net, NnError> {
    let origin = weights.display().to_string();
    let bytes = std::fs::read(weights).map_err(|e| invalid(&origin, e))?;
    load_net_bytes(meta, bytes, device, &origin)
}

/// Finds the first parameter that is not FP32 or holds a non-finite value.
#[derive(Default)]
struct ParamCheck {
    path: Vec<String>,
    problem: Option<String>,
}

impl ModuleVisitor for ParamCheck {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.problem.is_some() {
            return;
        }
        let t = param.val();
        let name = self.path.join(".");
        if t.dtype() != DType::F32 {
            self.problem = Some(format!("parameter {name} is {:?}, expected F32", t.dtype()));
            return;
        }
        match t.into_data().as_slice::<f32>() {
            Ok(v) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    self.problem = Some(format!("parameter {name} holds a non-finite value ({}) at index {i}", v[i]));
                }
            }
            Err(e) => self.problem = Some(format!("parameter {name}: {e:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mlp: MlpConfig) -> ModelMeta {
        ModelMeta { input_shape: vec![4], classes: 3, ..ModelMeta::untrained(mlp, "test") }
    }

    #[test]
    fn absurd_sizes_are_rejected_before_allocating() {
        for m in [
            MlpConfig { input: 0, hidden: vec![2], classes: 3 },
            MlpConfig { input: 4, hidden: vec![0], classes: 3 },
            MlpConfig { input: 1 << 30, hidden: vec![2], classes: 3 },
            MlpConfig { input: 1 << 20, hidden: vec![1 << 20], classes: 3 },
            MlpConfig { input: 4, hidden: vec![2; 100], classes: 3 },
        ] {
            assert!(check_config(&meta(m.clone()), "x").is_err(), "{m:?}");
        }
        assert!(check_config(&meta(MlpConfig { input: 4, hidden: vec![2], classes: 3 }), "x").is_ok());
        let mut m = meta(MlpConfig { input: 4, hidden: vec![2], classes: 3 });
        m.arch = "mlp-5-2-3".into();
        assert!(check_config(&m, "x").is_err());
    }
}
