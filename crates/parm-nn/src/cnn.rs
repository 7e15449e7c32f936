//! Convolutional deployed models: a LeNet-5-style CNN (MNIST / Fashion-MNIST) and the
//! CIFAR-style ResNet-18, and [`Net`], the one type every architecture loads into.
//!
//! Sources: LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition",
//! 1998) with ReLU and max pooling, as commonly used on 28x28 inputs: conv 5x5 (6, same
//! padding) - pool 2 - conv 5x5 (16) - pool 2 - fc 120 - fc 84 - fc classes. ResNet-18,
//! CIFAR variant (He et al. 2016; the variant of the parity-models code, shared/docs/PARM.md
//! §2): 3x3 stem with `width` channels (64), four stages of two basic blocks with
//! `width`, 2x, 4x, 8x channels and strides 1, 2, 2, 2, global average pool, fc.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use crate::cells::CellMlp;
use crate::mlp::Init;
use crate::{Mlp, MlpConfig};

/// A model that maps flat `[batch, values]` queries to `[batch, classes]` logits.
pub trait Classifier {
    fn classify(&self, x: Tensor<2>) -> Tensor<2>;

    /// The device the weights live on: inputs to [`Classifier::classify`] must be built there.
    fn device(&self) -> Device;
}

/// The device of a module's weights (the first one; parm keeps a model on one device), or
/// the CPU for a module with no weights.
pub(crate) fn module_device(module: &impl Module) -> Device {
    module.devices().into_iter().next().unwrap_or_else(Device::flex)
}

impl Classifier for Mlp {
    fn classify(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward(x)
    }

    fn device(&self) -> Device {
        module_device(self)
    }
}

fn to_image(x: Tensor<2>, shape: [usize; 3]) -> Tensor<4> {
    let b = x.dims()[0];
    x.reshape([b, shape[0], shape[1], shape[2]])
}

/// LeNet-5-style CNN.
#[derive(Module, Debug)]
pub struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
    channels: usize,
    side: usize,
}

impl LeNet {
    /// `channels x side x side` inputs (side divisible by 4, at least 12).
    pub fn new(channels: usize, side: usize, classes: usize, device: &Device) -> Self {
        let after = (side / 2 - 4) / 2;
        Self {
            conv1: Conv2dConfig::new([channels, 6], [5, 5]).with_padding(PaddingConfig2d::Same).init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(16 * after * after, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, classes).init(device),
            relu: Relu::new(),
            channels,
            side,
        }
    }
}

impl Classifier for LeNet {
    fn classify(&self, x: Tensor<2>) -> Tensor<2> {
        let h = to_image(x, [self.channels, self.side, self.side]);
        let h = self.pool.forward(self.relu.forward(self.conv1.forward(h)));
        let h = self.pool.forward(self.relu.forward(self.conv2.forward(h)));
        let h: Tensor<2> = h.flatten(1, 3);
        let h = self.relu.forward(self.fc1.forward(h));
        let h = self.relu.forward(self.fc2.forward(h));
        self.fc3.forward(h)
    }

    fn device(&self) -> Device {
        module_device(self)
    }
}

/// A ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input, ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
    relu: Relu,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let conv3 = |i, o, s| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        let shortcut = (stride != 1 || cin != cout).then(|| {
            (
                Conv2dConfig::new([cin, cout], [1, 1]).with_stride([stride, stride]).with_bias(false).init(device),
                BatchNormConfig::new(cout).init(device),
            )
        });
        Self {
            conv1: conv3(cin, cout, stride),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv3(cout, cout, 1),
            bn2: BatchNormConfig::new(cout).init(device),
            shortcut,
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.relu.forward(self.bn1.forward(self.conv1.forward(x.clone())));
        let h = self.bn2.forward(self.conv2.forward(h));
        let s = match &self.shortcut {
            Some((c, b)) => b.forward(c.forward(x)),
            None => x,
        };
        self.relu.forward(h + s)
    }
}

/// CIFAR-style ResNet-18.
#[derive(Module, Debug)]
pub struct ResNet18 {
    stem: Conv2d,
    bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
    relu: Relu,
    channels: usize,
    side: usize,
}

impl ResNet18 {
    /// `width`: channels of the first stage (64 in ResNet-18; smaller for tiny-scale runs).
    pub fn new(channels: usize, side: usize, classes: usize, width: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut cin = width;
        for (stage, stride) in [1usize, 2, 2, 2].into_iter().enumerate() {
            let cout = width << stage;
            blocks.push(BasicBlock::new(cin, cout, stride, device));
            blocks.push(BasicBlock::new(cout, cout, 1, device));
            cin = cout;
        }
        Self {
            stem: Conv2dConfig::new([channels, width], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(width).init(device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(cin, classes).init(device),
            relu: Relu::new(),
            channels,
            side,
        }
    }
}

impl Classifier for ResNet18 {
    fn classify(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = self.relu.forward(self.bn.forward(self.stem.forward(to_image(x, [self.channels, self.side, self.side]))));
        for b in &self.blocks {
            h = b.forward(h);
        }
        let h: Tensor<2> = self.pool.forward(h).flatten(1, 3);
        self.fc.forward(h)
    }

    fn device(&self) -> Device {
        module_device(self)
    }
}

/// Every architecture parm trains, behind one type; `ModelMeta::arch` says which.
// A model is built once per process; boxing the larger variants would only complicate
// burn's `Module` derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    Mlp(Mlp),
    LeNet(LeNet),
    ResNet18(ResNet18),
    /// A cell-wise parity model for the concatenation encoder ([`crate::cells`]).
    CellMlp(CellMlp),
}

impl From<Mlp> for Net {
    fn from(m: Mlp) -> Self {
        Net::Mlp(m)
    }
}

impl Classifier for Net {
    fn classify(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward(x),
            Net::LeNet(m) => m.classify(x),
            Net::ResNet18(m) => m.classify(x),
            Net::CellMlp(m) => m.classify(x),
        }
    }

    fn device(&self) -> Device {
        module_device(self)
    }
}

impl Net {
    /// `x`: `[batch, values]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.classify(x)
    }
}

/// Which architecture to build, and its name in `ModelMeta::arch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    Mlp(MlpConfig),
    /// `lenet5-CxSxS-N`.
    LeNet {
        channels: usize,
        side: usize,
        classes: usize,
    },
    /// `resnet18-wW-CxSxS-N`.
    ResNet18 {
        channels: usize,
        side: usize,
        classes: usize,
        width: usize,
    },
    /// `cellmlp-kK-CxHxW-H1-..-N`: the cell-wise parity model ([`crate::cells::CellMlp`]) for
    /// k queries of `C x H x W`; `mlp` is the whole model's interface (input C*H*W, the shared
    /// MLP's hidden layers, `k x classes` outputs), as stored in the metadata.
    CellMlp {
        k: usize,
        channels: usize,
        rows: usize,
        cols: usize,
        mlp: MlpConfig,
    },
}

impl NetConfig {
    /// The architecture name stored in metadata.
    pub fn name(&self) -> String {
        match self {
            NetConfig::Mlp(c) => c.name(),
            NetConfig::LeNet { channels, side, classes } => format!("lenet5-{channels}x{side}x{side}-{classes}"),
            NetConfig::ResNet18 { channels, side, classes, width } => {
                format!("resnet18-w{width}-{channels}x{side}x{side}-{classes}")
            }
            NetConfig::CellMlp { k, channels, rows, cols, mlp } => {
                let mut s = format!("cellmlp-k{k}-{channels}x{rows}x{cols}");
                for h in &mlp.hidden {
                    s += &format!("-{h}");
                }
                s + &format!("-{}", mlp.classes)
            }
        }
    }

    /// Parses a name made by [`NetConfig::name`]; an `mlp-...` name takes its layer sizes
    /// from `mlp` (the metadata's MLP config).
    pub fn parse(arch: &str, mlp: &MlpConfig) -> Option<Self> {
        let dims = |s: &str| -> Option<(usize, usize)> {
            let v: Vec<usize> = s.split('x').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            (v.len() == 3 && v[1] == v[2]).then(|| (v[0], v[1]))
        };
        let parts: Vec<&str> = arch.split('-').collect();
        match parts.as_slice() {
            ["lenet5", shape, n] => {
                let (channels, side) = dims(shape)?;
                Some(NetConfig::LeNet { channels, side, classes: n.parse().ok()? })
            }
            ["resnet18", w, shape, n] => {
                let (channels, side) = dims(shape)?;
                let width = w.strip_prefix('w')?.parse().ok()?;
                Some(NetConfig::ResNet18 { channels, side, classes: n.parse().ok()?, width })
            }
            // The name must agree with the metadata's layer sizes.
            ["mlp", ..] => (mlp.name() == arch).then(|| NetConfig::Mlp(mlp.clone())),
            ["cellmlp", kk, shape, ..] => {
                let k: usize = kk.strip_prefix('k')?.parse().ok()?;
                let v: Vec<usize> = shape.split('x').map(|p| p.parse().ok()).collect::<Option<_>>()?;
                let [channels, rows, cols] = v.as_slice() else { return None };
                let cfg = NetConfig::CellMlp { k, channels: *channels, rows: *rows, cols: *cols, mlp: mlp.clone() };
                (k > 0 && mlp.classes.is_multiple_of(k) && mlp.input == channels * rows * cols && cfg.name() == arch).then_some(cfg)
            }
            _ => None,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            NetConfig::Mlp(c) | NetConfig::CellMlp { mlp: c, .. } => c.classes,
            NetConfig::LeNet { classes, .. } | NetConfig::ResNet18 { classes, .. } => *classes,
        }
    }

    /// Values per query.
    pub fn input(&self) -> usize {
        match self {
            NetConfig::Mlp(c) | NetConfig::CellMlp { mlp: c, .. } => c.input,
            NetConfig::LeNet { channels, side, .. } | NetConfig::ResNet18 { channels, side, .. } => channels * side * side,
        }
    }

    /// Multiply-accumulates of one forward pass of one input (for a cell-wise model, one
    /// whole parity query of k cells), counting convolutions and linear layers (bias, pooling,
    /// activations and batch norm left out). The unit in which `parm eval --report` states a
    /// code's extra compute per query.
    pub fn macs(&self) -> u64 {
        let dense = |c: &MlpConfig| {
            let mut widths = vec![c.input];
            widths.extend(&c.hidden);
            widths.push(c.classes);
            widths.windows(2).map(|w| (w[0] * w[1]) as u64).sum::<u64>()
        };
        // A KxK convolution from `cin` to `cout` channels producing `side x side` outputs.
        let conv = |cin: usize, cout: usize, kernel: usize, side: usize| (cin * cout * kernel * kernel * side * side) as u64;
        match self {
            NetConfig::Mlp(c) => dense(c),
            NetConfig::LeNet { channels, side, classes } => {
                let (half, after) = (side / 2, (side / 2 - 4) / 2);
                conv(*channels, 6, 5, *side) + conv(6, 16, 5, half - 4) + (16 * after * after * 120 + 120 * 84 + 84 * classes) as u64
            }
            NetConfig::ResNet18 { channels, side, classes, width } => {
                let mut total = conv(*channels, *width, 3, *side);
                let (mut cin, mut s) = (*width, *side);
                for (stage, stride) in [1usize, 2, 2, 2].into_iter().enumerate() {
                    let cout = width << stage;
                    s /= stride;
                    total += conv(cin, cout, 3, s) + 3 * conv(cout, cout, 3, s);
                    if stride != 1 || cin != cout {
                        total += conv(cin, cout, 1, s);
                    }
                    cin = cout;
                }
                total + (cin * classes) as u64
            }
            NetConfig::CellMlp { k, channels, rows, cols, mlp } => {
                let cell = crate::cells::cell_mlp_config(*k, *channels, *rows, *cols, &mlp.hidden, mlp.classes / k);
                *k as u64 * dense(&cell)
            }
        }
    }

    pub fn init(&self, init: Init, device: &Device) -> Net {
        match self {
            NetConfig::Mlp(c) => Net::Mlp(c.init(init, device)),
            NetConfig::LeNet { channels, side, classes } => Net::LeNet(LeNet::new(*channels, *side, *classes, device)),
            NetConfig::ResNet18 { channels, side, classes, width } => {
                Net::ResNet18(ResNet18::new(*channels, *side, *classes, *width, device))
            }
            NetConfig::CellMlp { k, channels, rows, cols, mlp } => {
                Net::CellMlp(CellMlp::new(*k, *channels, *rows, *cols, &mlp.hidden, mlp.classes / k, init, device))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor2;

    #[test]
    fn macs_count_each_layer() {
        // ParM's MLP: 784*200 + 200*100 + 100*10.
        assert_eq!(NetConfig::Mlp(MlpConfig::default()).macs(), 177_800);
        // LeNet-5 on 28x28: conv1 6*25*784, conv2 16*6*25*100, fc 400*120 + 120*84 + 84*10.
        assert_eq!(NetConfig::LeNet { channels: 1, side: 28, classes: 10 }.macs(), 117_600 + 240_000 + 48_000 + 10_080 + 840);
        // Two cells of 14x28 (392 values) through one 392-200-100-10 MLP.
        let mlp = MlpConfig { input: 784, hidden: vec![200, 100], classes: 20 };
        let cells = NetConfig::CellMlp { k: 2, channels: 1, rows: 28, cols: 28, mlp };
        assert_eq!(cells.macs(), 2 * (392 * 200 + 200 * 100 + 100 * 10));
        // ResNet-18 grows with the square of its width.
        let r = |width| NetConfig::ResNet18 { channels: 3, side: 32, classes: 10, width }.macs();
        assert!(r(8) > 3 * r(4) && r(8) < 5 * r(4));
    }

    #[test]
    fn names_round_trip_and_shapes() {
        let mlp = MlpConfig::default();
        for c in [
            NetConfig::LeNet { channels: 1, side: 28, classes: 10 },
            NetConfig::ResNet18 { channels: 3, side: 32, classes: 10, width: 4 },
            NetConfig::Mlp(mlp.clone()),
            NetConfig::CellMlp { k: 4, channels: 1, rows: 28, cols: 28, mlp: MlpConfig { input: 784, hidden: vec![32], classes: 40 } },
        ] {
            let meta_mlp = match &c {
                NetConfig::CellMlp { mlp, .. } => mlp.clone(),
                _ => mlp.clone(),
            };
            assert_eq!(NetConfig::parse(&c.name(), &meta_mlp), Some(c.clone()));
            let device = Device::flex();
            let net = c.init(Init::Default, &device);
            let out = net.forward(tensor2(vec![0.5; 2 * c.input()], 2, c.input(), &device));
            assert_eq!(out.dims(), [2, c.classes()]);
        }
    }
}
