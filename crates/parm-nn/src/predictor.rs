//! A loaded model ready for single-query and batched inference.

use std::path::Path;

use burn::tensor::Device;

use crate::train::load_net;
use crate::{ModelMeta, Net, NnError, tensor2, to_vec};

/// A model on one device (the CPU unless loaded with [`Predictor::load_on`]) with its
/// metadata.
#[derive(Debug)]
pub struct Predictor {
    model: Net,
    meta: ModelMeta,
    device: Device,
}

impl Predictor {
    /// Loads `weights` (`.bpk`) and its `.json` metadata, any architecture. Errors as
    /// [`crate::train::load_net`].
    pub fn load(weights: &Path) -> Result<Self, NnError> {
        Self::load_on(weights, &Device::flex())
    }

    /// Like [`Predictor::load`], onto `device` (from [`crate::ComputeDevice::open`]).
    pub fn load_on(weights: &Path, device: &Device) -> Result<Self, NnError> {
        let (model, meta) = load_net(weights, device)?;
        Ok(Self { model, meta, device: device.clone() })
    }

    /// Wraps an already built model (an [`crate::Mlp`] or any [`Net`]), on the device its
    /// weights are on.
    pub fn new(model: impl Into<Net>, meta: ModelMeta) -> Self {
        let model = model.into();
        let device = crate::Classifier::device(&model);
        Self { model, meta, device }
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn model(&self) -> &Net {
        &self.model
    }

    /// Values per query (784 for MNIST-sized models).
    pub fn input_len(&self) -> usize {
        self.meta.mlp.input
    }

    /// `input`: `[batch, input_len]` row-major -> logits `[batch, classes]` row-major.
    ///
    /// Errors: [`NnError::Invalid`] if `input.len() != batch * input_len` or `batch == 0`.
    pub fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        let dim = self.input_len();
        if batch == 0 || input.len() != batch * dim {
            return Err(NnError::Invalid(format!("expected {batch} x {dim} = {} input values, got {}", batch * dim, input.len())));
        }
        Ok(to_vec(self.model.forward(tensor2(input.to_vec(), batch, dim, &self.device))))
    }
}
