//! A training-free systematic code: Berrut rational interpolation (ApproxIFER) made systematic.

use crate::{CodeError, Encoder, LinearEncoder, check_same_len};

/// Systematic Berrut code for k queries and S extra ("blended") queries.
///
/// Source: Soleymani, Jahani-Nezhad, Mahdavifar, Maddah-Ali, "ApproxIFER: A Model-Agnostic
/// Approach to Resilient and Robust Prediction Serving Systems", AAAI 2022 (arXiv 2109.09868),
/// which encodes with Berrut's rational interpolant (Berrut 1988)
/// `u(z) = sum_j [w_j / (z - a_j)] X_j / sum_j [w_j / (z - a_j)]`, `w_j = (-1)^j`, runs the
/// deployed model F on u at N evaluation points, and decodes every prediction by
/// interpolating the available outputs with the same formula. ApproxIFER is non-systematic
/// (every answer is interpolated). Here it is made systematic: all N = k + S points are the
/// Chebyshev points of the first kind `z_i = cos((2i + 1) pi / (2N))` (sorted ascending); S
/// of them, spread evenly (indices `round((t + 1/2) N / S - 1/2)`), are the blended points
/// b_t and the other k are the data points a_j. Since u(a_j) = X_j, the k data instances run
/// F on the queries themselves and their predictions are exact; the S extra instances run F
/// on u(b_t). An unavailable prediction F(X_j) is estimated by Berrut interpolation, at a_j,
/// of the outputs available at the other points (with weights (-1)^i in the order of the
/// available points). Up to S unavailable outputs per group can be tolerated; no training,
/// and the extra instances run the deployed model itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BerrutCode {
    k: usize,
    s: usize,
    /// All N points, ascending.
    points: Vec<f64>,
    /// Index into `points` of data point j.
    data_idx: Vec<usize>,
    /// Index into `points` of blended point t.
    blend_idx: Vec<usize>,
}

impl BerrutCode {
    /// Errors: [`CodeError::ZeroK`] if k or S is 0.
    pub fn new(k: usize, s: usize) -> Result<Self, CodeError> {
        if k == 0 || s == 0 {
            return Err(CodeError::ZeroK);
        }
        let n = k + s;
        let mut points: Vec<f64> = (0..n).map(|i| ((2 * i + 1) as f64 * std::f64::consts::PI / (2 * n) as f64).cos()).collect();
        points.reverse();
        let blend_idx: Vec<usize> = (0..s).map(|t| (((t as f64 + 0.5) * n as f64 / s as f64) - 0.5).round() as usize).collect();
        let data_idx = (0..n).filter(|i| !blend_idx.contains(i)).collect();
        Ok(Self { k, s, points, data_idx, blend_idx })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Extra (blended) queries per group.
    pub fn s(&self) -> usize {
        self.s
    }

    /// The S blended queries `u(b_t)` of a group of k queries.
    ///
    /// Errors: [`CodeError::WrongCount`], [`CodeError::ShapeMismatch`].
    pub fn encode(&self, queries: &[&[f32]]) -> Result<Vec<Vec<f32>>, CodeError> {
        if queries.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: queries.len() });
        }
        (0..self.s).map(|t| self.encoder(t).encode(queries)).collect()
    }

    /// The encoder of blended query t (`t < S`): `u(b_t) = sum_j w_j X_j` with the Berrut
    /// weights of the data points at b_t, which sum to 1. The coded path builds each
    /// redundant query of a group with one such encoder. Panics if `t >= S`.
    pub fn encoder(&self, t: usize) -> LinearEncoder {
        assert!(t < self.s, "blended query {t} of a code with S = {}", self.s);
        let nodes: Vec<f64> = self.data_idx.iter().map(|&i| self.points[i]).collect();
        let weights = berrut_weights(&nodes, self.points[self.blend_idx[t]]).into_iter().map(|w| w as f32).collect();
        LinearEncoder::new(weights).expect("k >= 1")
    }

    /// Estimates every unavailable prediction. `outputs`: the k predictions (`None` where
    /// unavailable); `blended_outputs`: the S outputs F(u(b_t)) (`None` where unavailable).
    /// Returns `(j, estimate of F(X_j))` for each unavailable j, in order.
    ///
    /// Errors: [`CodeError::TooManyErasures`] if more than S of the k + S outputs are
    /// unavailable; [`CodeError::WrongCount`], [`CodeError::ShapeMismatch`].
    pub fn decode(&self, outputs: &[Option<&[f32]>], blended_outputs: &[Option<&[f32]>]) -> Result<Vec<(usize, Vec<f32>)>, CodeError> {
        if outputs.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: outputs.len() });
        }
        if blended_outputs.len() != self.s {
            return Err(CodeError::WrongCount { expected: self.s, got: blended_outputs.len() });
        }
        let mut avail: Vec<(f64, &[f32])> = Vec::new();
        for (j, o) in outputs.iter().enumerate() {
            if let Some(o) = o {
                avail.push((self.points[self.data_idx[j]], o));
            }
        }
        for (t, o) in blended_outputs.iter().enumerate() {
            if let Some(o) = o {
                avail.push((self.points[self.blend_idx[t]], o));
            }
        }
        let lost = self.k + self.s - avail.len();
        if lost > self.s {
            return Err(CodeError::TooManyErasures { erasures: lost, parities: self.s });
        }
        let missing: Vec<usize> = (0..self.k).filter(|&j| outputs[j].is_none()).collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        avail.sort_by(|a, b| a.0.total_cmp(&b.0));
        let m = avail[0].1.len();
        check_same_len(avail.iter().enumerate().map(|(i, a)| (i, a.1)), m)?;
        let nodes: Vec<f64> = avail.iter().map(|a| a.0).collect();
        Ok(missing
            .into_iter()
            .map(|j| {
                let w = berrut_weights(&nodes, self.points[self.data_idx[j]]);
                let mut out = vec![0.0f64; m];
                for ((_, y), &wi) in avail.iter().zip(&w) {
                    for (o, &v) in out.iter_mut().zip(y.iter()) {
                        *o += wi * v as f64;
                    }
                }
                (j, out.into_iter().map(|v| v as f32).collect())
            })
            .collect())
    }
}

/// The normalised Berrut weights `[(-1)^i / (z - x_i)] / sum_i [(-1)^i / (z - x_i)]` of
/// ascending nodes x at z; if z is a node, the indicator of that node.
pub fn berrut_weights(nodes: &[f64], z: f64) -> Vec<f64> {
    if let Some(i) = nodes.iter().position(|&x| x == z) {
        let mut w = vec![0.0; nodes.len()];
        w[i] = 1.0;
        return w;
    }
    let raw: Vec<f64> = nodes.iter().enumerate().map(|(i, &x)| if i % 2 == 0 { 1.0 } else { -1.0 } / (z - x)).collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let c = BerrutCode::new(2, 1).unwrap();
        assert_eq!(c.blend_idx, vec![1]);
        assert_eq!(c.data_idx, vec![0, 2]);
        let c = BerrutCode::new(8, 3).unwrap();
        assert_eq!(c.blend_idx.len(), 3);
        assert_eq!(c.data_idx.len(), 8);
        assert!(c.points.windows(2).all(|w| w[0] < w[1]));
    }

    proptest! {
        /// Berrut's interpolant reproduces constants: if F is constant on the blended queries,
        /// every reconstruction is exact, for any pattern of up to S erasures.
        #[test]
        fn reproduces_constants(k in 1usize..13, s in 1usize..4, mask in 0u32..(1 << 15), c in -5.0f32..5.0) {
            let code = BerrutCode::new(k, s).unwrap();
            let y = [c, 2.0 * c];
            let lost: Vec<usize> = (0..k + s).filter(|i| mask >> i & 1 == 1).take(s).collect();
            let outputs: Vec<Option<&[f32]>> = (0..k).map(|j| (!lost.contains(&j)).then_some(&y[..])).collect();
            let blended: Vec<Option<&[f32]>> = (0..s).map(|t| (!lost.contains(&(k + t))).then_some(&y[..])).collect();
            let dec = code.decode(&outputs, &blended).unwrap();
            prop_assert_eq!(dec.len(), lost.iter().filter(|&&i| i < k).count());
            for (_, v) in dec {
                prop_assert!((v[0] - c).abs() < 1e-4 && (v[1] - 2.0 * c).abs() < 1e-4);
            }
        }

        /// Encoding weights sum to 1 (a blended query of equal queries is that query).
        #[test]
        fn blends_are_affine(k in 1usize..13, s in 1usize..4, v in -3.0f32..3.0) {
            let code = BerrutCode::new(k, s).unwrap();
            let q = vec![v; 5];
            let qs: Vec<&[f32]> = (0..k).map(|_| q.as_slice()).collect();
            for b in code.encode(&qs).unwrap() {
                for x in b { prop_assert!((x - v).abs() < 1e-4); }
            }
        }
    }

    #[test]
    fn smooth_functions_interpolate_well() {
        // F = identity on scalar queries that lie on a smooth curve of the points: the
        // reconstruction is close (Berrut's interpolant is only first-order accurate, and the
        // blended outputs are themselves interpolated, so "close" is loose).
        let code = BerrutCode::new(8, 2).unwrap();
        let xs: Vec<Vec<f32>> = code.data_idx.iter().map(|&i| vec![(code.points[i] as f32).sin()]).collect();
        let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
        let blended = code.encode(&refs).unwrap();
        let mut outputs: Vec<Option<&[f32]>> = refs.iter().map(|r| Some(*r)).collect();
        outputs[3] = None;
        let b: Vec<Option<&[f32]>> = blended.iter().map(|b| Some(b.as_slice())).collect();
        let dec = code.decode(&outputs, &b).unwrap();
        assert_eq!(dec[0].0, 3);
        assert!((dec[0].1[0] - xs[3][0]).abs() < 0.25, "{:?} vs {:?}", dec[0].1, xs[3]);
        assert!(code.decode(&[None; 8].map(|_: Option<&[f32]>| None), &b).is_err());
    }
}

/// ApproxIFER as published (non-systematic), for comparison with [`BerrutCode`].
///
/// Source: Soleymani et al., AAAI 2022 (arXiv 2109.09868), §4: the k queries sit at the
/// Chebyshev points of the first kind `a_j = cos((2j + 1) pi / 2k)`; N = k + S instances run
/// F on `u(b_i)`, `b_i = cos(i pi / (N - 1))` (second kind); from the outputs of any N - S
/// instances every prediction F(X_j) is estimated by Berrut interpolation at a_j. Every
/// answer is approximate, slow instance or not.
#[derive(Debug, Clone, PartialEq)]
pub struct ApproxiferCode {
    k: usize,
    s: usize,
    alphas: Vec<f64>,
    betas: Vec<f64>,
}

impl ApproxiferCode {
    /// Errors: [`CodeError::ZeroK`] if k is 0.
    pub fn new(k: usize, s: usize) -> Result<Self, CodeError> {
        if k == 0 {
            return Err(CodeError::ZeroK);
        }
        let n = k + s;
        let pi = std::f64::consts::PI;
        let mut alphas: Vec<f64> = (0..k).map(|j| ((2 * j + 1) as f64 * pi / (2 * k) as f64).cos()).collect();
        alphas.reverse();
        let mut betas: Vec<f64> = (0..n).map(|i| if n == 1 { 0.0 } else { (i as f64 * pi / (n - 1) as f64).cos() }).collect();
        betas.reverse();
        Ok(Self { k, s, alphas, betas })
    }

    /// Instances per group, k + S.
    pub fn n(&self) -> usize {
        self.k + self.s
    }

    /// The N coded queries `u(b_i)`.
    pub fn encode(&self, queries: &[&[f32]]) -> Result<Vec<Vec<f32>>, CodeError> {
        if queries.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: queries.len() });
        }
        let n = queries[0].len();
        check_same_len(queries.iter().copied().enumerate(), n)?;
        Ok(self
            .betas
            .iter()
            .map(|&b| {
                let w = berrut_weights(&self.alphas, b);
                let mut out = vec![0.0f32; n];
                for (q, &wj) in queries.iter().zip(&w) {
                    for (o, &x) in out.iter_mut().zip(q.iter()) {
                        *o += wj as f32 * x;
                    }
                }
                out
            })
            .collect())
    }

    /// Estimates of all k predictions from the N outputs (`None` where unavailable; at most S).
    pub fn decode(&self, outputs: &[Option<&[f32]>]) -> Result<Vec<Vec<f32>>, CodeError> {
        if outputs.len() != self.n() {
            return Err(CodeError::WrongCount { expected: self.n(), got: outputs.len() });
        }
        let avail: Vec<(f64, &[f32])> = outputs.iter().zip(&self.betas).filter_map(|(o, &b)| o.map(|o| (b, o))).collect();
        if avail.len() + self.s < self.n() || avail.is_empty() {
            return Err(CodeError::TooManyErasures { erasures: self.n() - avail.len(), parities: self.s });
        }
        let m = avail[0].1.len();
        check_same_len(avail.iter().enumerate().map(|(i, a)| (i, a.1)), m)?;
        let nodes: Vec<f64> = avail.iter().map(|a| a.0).collect();
        Ok(self
            .alphas
            .iter()
            .map(|&a| {
                let w = berrut_weights(&nodes, a);
                let mut out = vec![0.0f64; m];
                for ((_, y), &wi) in avail.iter().zip(&w) {
                    for (o, &v) in out.iter_mut().zip(y.iter()) {
                        *o += wi * v as f64;
                    }
                }
                out.into_iter().map(|v| v as f32).collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod approxifer_tests {
    use super::*;

    #[test]
    fn identity_f_on_smooth_queries_is_close_and_constants_exact() {
        let code = ApproxiferCode::new(8, 1).unwrap();
        let c = [2.5f32];
        let qs: Vec<&[f32]> = (0..8).map(|_| &c[..]).collect();
        let enc = code.encode(&qs).unwrap();
        let mut outs: Vec<Option<&[f32]>> = enc.iter().map(|e| Some(e.as_slice())).collect();
        outs[4] = None;
        for v in code.decode(&outs).unwrap() {
            assert!((v[0] - 2.5).abs() < 1e-4);
        }
        outs[5] = None;
        assert!(code.decode(&outs).is_err());
    }
}
