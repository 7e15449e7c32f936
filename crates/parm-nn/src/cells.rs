//! A cell-wise parity model for the concatenation encoder: one small MLP, shared by the k
//! cells of the parity query, reads each cell and outputs that query's logits.
//!
//! The concatenation encoder ([`parm_codes::ConcatenationEncoder`]) puts query j, area-averaged,
//! into cell j of a grid; a per-query parity model ([`crate::parity::ParityConfig::per_query`])
//! outputs k blocks of logits, block j trained towards F(X_j). A dense MLP over the whole
//! parity query must learn the same task k times, once per cell position, each from 1/k of the
//! examples. This model applies the same MLP to every cell (weight sharing across cells, as a
//! convolution with the cell as its stride): k times fewer weights per cell, and every group
//! gives it k examples. Cells of unequal size (28 rows in 3 grid rows: 9, 10, 9) are zero-padded
//! at the bottom and right to the largest cell. Input and output are those of a dense per-query
//! parity model (`[batch, C*H*W]` -> `[batch, k * classes]`), so serving and the decoder do not
//! change.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::mlp::Init;
use crate::{Classifier, Mlp, MlpConfig};

/// Cell-wise MLP parity model (see the module docs).
#[derive(Module, Debug)]
pub struct CellMlp {
    mlp: Mlp,
    k: usize,
    channels: usize,
    rows: usize,
    cols: usize,
}

/// The largest cell of the concatenation grid for k queries: `(rows, cols)`.
pub fn max_cell(k: usize, rows: usize, cols: usize) -> (usize, usize) {
    parm_codes::concat_cells(k, rows, cols).iter().fold((0, 0), |(h, w), &(_, ch, _, cw)| (h.max(ch), w.max(cw)))
}

/// The MLP applied to each cell: input `channels x max cell`, the given hidden layers, and
/// `classes` outputs (one query's logits).
pub fn cell_mlp_config(k: usize, channels: usize, rows: usize, cols: usize, hidden: &[usize], classes: usize) -> MlpConfig {
    let (h, w) = max_cell(k, rows, cols);
    MlpConfig { input: channels * h * w, hidden: hidden.to_vec(), classes }
}

impl CellMlp {
    /// `classes`: logits per query (the model outputs `k * classes`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(k: usize, channels: usize, rows: usize, cols: usize, hidden: &[usize], classes: usize, init: Init, device: &Device) -> Self {
        let mlp = cell_mlp_config(k, channels, rows, cols, hidden, classes).init(init, device);
        Self { mlp, k, channels, rows, cols }
    }

    /// The MLP applied to every cell.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// Values per parity query: `C * H * W`.
    pub fn input_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// Queries per parity query (cells in the grid).
    pub fn k(&self) -> usize {
        self.k
    }

    /// For each cell j (in order) and each value of the padded cell, the index of the input
    /// value it reads; `C*H*W` (one past the input) for padding.
    pub(crate) fn gather_index(&self) -> Vec<i64> {
        let (mh, mw) = max_cell(self.k, self.rows, self.cols);
        let pad = (self.channels * self.rows * self.cols) as i64;
        let mut idx = Vec::with_capacity(self.k * self.channels * mh * mw);
        for (r0, h, c0, w) in parm_codes::concat_cells(self.k, self.rows, self.cols) {
            for ch in 0..self.channels {
                for r in 0..mh {
                    for c in 0..mw {
                        idx.push(if r < h && c < w { (ch * self.rows * self.cols + (r0 + r) * self.cols + c0 + c) as i64 } else { pad });
                    }
                }
            }
        }
        idx
    }
}

impl Classifier for CellMlp {
    fn classify(&self, x: Tensor<2>) -> Tensor<2> {
        let [b, _] = x.dims();
        let device = x.device();
        let idx = self.gather_index();
        let per_cell = idx.len() / self.k;
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx.clone(), [idx.len()]), &device);
        let padded = Tensor::cat(vec![x, Tensor::zeros([b, 1], &device)], 1);
        let cells = padded.select(1, idx).reshape([b * self.k, per_cell]);
        let out = self.mlp.forward(cells);
        let classes = out.dims()[1];
        out.reshape([b, self.k * classes])
    }

    fn device(&self) -> Device {
        crate::cnn::module_device(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor2;
    use parm_codes::{ConcatenationEncoder, Encoder, ImageShape};

    /// The block of query j depends only on query j: the same query in two groups, in the same
    /// cell, gets the same logits whatever the other queries are.
    #[test]
    fn each_block_reads_only_its_cell() {
        let device = Device::flex();
        let k = 8;
        let m = CellMlp::new(k, 1, 28, 28, &[16], 10, Init::Default, &device);
        let enc = ConcatenationEncoder::new(k, ImageShape::new(1, 28, 28)).unwrap();
        let q: Vec<Vec<f32>> = (0..2 * k).map(|i| (0..784).map(|p| ((i * 31 + p * 7) % 13) as f32 / 13.0).collect()).collect();
        let g1: Vec<&[f32]> = q[..k].iter().map(|v| v.as_slice()).collect();
        let mut g2: Vec<&[f32]> = q[k..].iter().map(|v| v.as_slice()).collect();
        g2[3] = g1[3];
        let mut x = enc.encode(&g1).unwrap();
        x.extend(enc.encode(&g2).unwrap());
        let out = crate::to_vec(m.classify(tensor2(x, 2, 784, &device)));
        assert_eq!(out.len(), 2 * k * 10);
        let (a, b) = (&out[3 * 10..4 * 10], &out[k * 10 + 3 * 10..k * 10 + 4 * 10]);
        for (u, v) in a.iter().zip(b) {
            assert!((u - v).abs() < 1e-5);
        }
        assert!(out[..10].iter().zip(&out[k * 10..k * 10 + 10]).any(|(u, v)| (u - v).abs() > 1e-6));
        assert_eq!(max_cell(8, 28, 28), (10, 10));
        assert_eq!(max_cell(2, 28, 28), (28, 14));
    }
}
