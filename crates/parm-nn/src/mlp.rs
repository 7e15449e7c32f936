//! ParM's deployed model for MNIST and Fashion-MNIST: MLP 784-200-ReLU-100-ReLU-10.

use burn::module::{Initializer, Module};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Layer sizes of the MLP. ParM (SOSP 2019, §5.1) uses 784-200-100-10 (178,110 parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { input: 784, hidden: vec![200, 100], classes: 10 }
    }
}

/// Initialisation of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// burn's default (Kaiming uniform), used for deployed models.
    Default,
    /// N(0, 0.01) weights, as the parity-models code initialises parity models' linear layers.
    Normal001,
}

/// A multilayer perceptron with ReLU between layers; the output is raw logits.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    relu: Relu,
}

impl MlpConfig {
    /// Builds the model on `device`.
    pub fn init(&self, init: Init, device: &Device) -> Mlp {
        let mut sizes = vec![self.input];
        sizes.extend(&self.hidden);
        sizes.push(self.classes);
        let layers = sizes
            .windows(2)
            .map(|w| {
                let mut c = LinearConfig::new(w[0], w[1]);
                if init == Init::Normal001 {
                    c = c.with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 });
                }
                c.init(device)
            })
            .collect();
        Mlp { layers, relu: Relu::new() }
    }

    /// Short architecture name, e.g. `mlp-784-200-100-10`.
    pub fn name(&self) -> String {
        let mut s = format!("mlp-{}", self.input);
        for h in &self.hidden {
            s += &format!("-{h}");
        }
        s + &format!("-{}", self.classes)
    }
}

impl Mlp {
    /// The linear layers, input first; ReLU sits between consecutive layers. Each layer's
    /// weight is `[in, out]` and its bias `[out]`.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }

    /// `x`: `[batch, input]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = self.relu.forward(h);
            }
        }
        h
    }
}
