//! r >= 1 parities per coding group: r parity models over distinct linear combinations.

use crate::{CodeError, Decoder, Encoder, check_same_len};

/// A systematic linear code with r parities over the k queries of a group.
///
/// Design (parm's; ParM itself has r = 1 only, SOSP 2019 §3): parity l (0-based, l < r) is
/// the query `P_l = sum_j c[l][j] X_j`, served by its own parity model Fp_l trained so that
/// `Fp_l(P_l) ~= sum_j c[l][j] F(X_j)`. The coefficients are a Vandermonde matrix over k
/// distinct positive nodes, `c[l][j] = a_j^l` with `a_j = 1 + j / (k - 1)` in `[1, 2]`, so
/// parity 0 is ParM's addition code. Any e <= r unavailable predictions E are decoded from
/// any e available parity outputs L by solving the e x e system
/// `sum_{j in E} c[l][j] F(X_j) = Fp_l(P_l) - sum_{j not in E} c[l][j] F(X_j)`, `l in L`.
/// That matrix (rows L, columns E of c) is a generalised Vandermonde matrix on distinct
/// positive nodes, which is totally positive and so never singular (Gantmacher-Krein): this
/// is an MDS code over the reals, exact when F is linear and Fp_l = F.
/// (The same argument is the classic one for real-number Reed-Solomon / Vandermonde codes,
/// e.g. Lin et al., "Coded computation", and Yu et al., "Polynomial codes", 2017.)
#[derive(Debug, Clone, PartialEq)]
pub struct LinearCode {
    k: usize,
    r: usize,
    /// `r x k`, row-major.
    coeffs: Vec<f64>,
}

impl LinearCode {
    /// The Vandermonde code above. Errors: [`CodeError::ZeroK`] if k or r is 0.
    pub fn vandermonde(k: usize, r: usize) -> Result<Self, CodeError> {
        if k == 0 || r == 0 {
            return Err(CodeError::ZeroK);
        }
        let node = |j: usize| if k == 1 { 1.0 } else { 1.0 + j as f64 / (k - 1) as f64 };
        let coeffs = (0..r).flat_map(|l| (0..k).map(move |j| node(j).powi(l as i32))).collect();
        Ok(Self { k, r, coeffs })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Parities per group.
    pub fn r(&self) -> usize {
        self.r
    }

    /// Coefficient of query j in parity l.
    pub fn coeff(&self, l: usize, j: usize) -> f64 {
        self.coeffs[l * self.k + j]
    }

    /// The encoder of parity l (its parity model is trained with [`Encoder::weights`] as the
    /// target weights). Panics if `l >= r`.
    pub fn encoder(&self, l: usize) -> LinearEncoder {
        assert!(l < self.r, "parity {l} of a code with r = {}", self.r);
        LinearEncoder { k: self.k, weights: (0..self.k).map(|j| self.coeff(l, j) as f32).collect() }
    }

    /// Decodes every unavailable prediction. `parity_outputs`: r entries, `Fp_l(P_l)` or
    /// `None`; `outputs`: the k predictions, `None` where unavailable. Returns `(j, F(X_j))`
    /// for each unavailable j, in order (empty if none).
    ///
    /// Errors: [`CodeError::TooManyErasures`] if fewer parity outputs than unavailable
    /// predictions are available; [`CodeError::WrongCount`], [`CodeError::ShapeMismatch`].
    pub fn decode(&self, parity_outputs: &[Option<&[f32]>], outputs: &[Option<&[f32]>]) -> Result<Vec<(usize, Vec<f32>)>, CodeError> {
        if outputs.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: outputs.len() });
        }
        if parity_outputs.len() != self.r {
            return Err(CodeError::WrongCount { expected: self.r, got: parity_outputs.len() });
        }
        let missing: Vec<usize> = (0..self.k).filter(|&j| outputs[j].is_none()).collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<usize> = (0..self.r).filter(|&l| parity_outputs[l].is_some()).take(missing.len()).collect();
        if rows.len() < missing.len() {
            return Err(CodeError::TooManyErasures { erasures: missing.len(), parities: rows.len() });
        }
        let m = parity_outputs[rows[0]].unwrap().len();
        check_same_len(rows.iter().map(|&l| (l, parity_outputs[l].unwrap())), m)?;
        check_same_len(outputs.iter().enumerate().filter_map(|(i, o)| o.map(|o| (i, o))), m)?;
        let e = missing.len();
        // rhs[a][t] = y_{rows[a]}[t] - sum_{j available} c[rows[a]][j] F_j[t]
        let mut rhs: Vec<Vec<f64>> = rows
            .iter()
            .map(|&l| {
                let mut v: Vec<f64> = parity_outputs[l].unwrap().iter().map(|&x| x as f64).collect();
                for (j, o) in outputs.iter().enumerate() {
                    if let Some(o) = o {
                        let c = self.coeff(l, j);
                        for (r, &y) in v.iter_mut().zip(o.iter()) {
                            *r -= c * y as f64;
                        }
                    }
                }
                v
            })
            .collect();
        let mut a: Vec<Vec<f64>> = rows.iter().map(|&l| missing.iter().map(|&j| self.coeff(l, j)).collect()).collect();
        solve_in_place(&mut a, &mut rhs);
        Ok(missing.iter().zip(rhs).take(e).map(|(&j, v)| (j, v.into_iter().map(|x| x as f32).collect())).collect())
    }
}

/// Gaussian elimination with partial pivoting: solves `a X = b` for square `a` (e x e) and
/// `b` (e rows of any length), leaving X in `b`.
pub(crate) fn solve_in_place(a: &mut [Vec<f64>], b: &mut [Vec<f64>]) {
    let e = a.len();
    for col in 0..e {
        let piv = (col..e).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs())).unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for row in 0..e {
            if row == col {
                continue;
            }
            let f = a[row][col] / a[col][col];
            if f == 0.0 {
                continue;
            }
            // Two rows of one matrix: an index loop reads plainer than a split borrow.
            #[allow(clippy::needless_range_loop)]
            for c in col..e {
                a[row][c] -= f * a[col][c];
            }
            let (src, dst) = if row < col {
                let (lo, hi) = b.split_at_mut(col);
                (&hi[0], &mut lo[row])
            } else {
                let (lo, hi) = b.split_at_mut(row);
                (&lo[col], &mut hi[0])
            };
            for (d, s) in dst.iter_mut().zip(src.iter()) {
                *d -= f * s;
            }
        }
    }
    for row in 0..e {
        let d = a[row][row];
        for v in b[row].iter_mut() {
            *v /= d;
        }
    }
}

/// One parity of a [`LinearCode`]: `P = sum_j w_j X_j`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearEncoder {
    k: usize,
    weights: Vec<f32>,
}

impl LinearEncoder {
    /// An encoder with explicit weights (k = `weights.len()`). Errors: [`CodeError::ZeroK`].
    pub fn new(weights: Vec<f32>) -> Result<Self, CodeError> {
        if weights.is_empty() {
            return Err(CodeError::ZeroK);
        }
        Ok(Self { k: weights.len(), weights })
    }
}

impl Encoder for LinearEncoder {
    fn k(&self) -> usize {
        self.k
    }

    fn name(&self) -> &'static str {
        "linear"
    }

    fn weights(&self) -> Vec<f32> {
        self.weights.clone()
    }

    fn encode(&self, queries: &[&[f32]]) -> Result<Vec<f32>, CodeError> {
        if queries.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: queries.len() });
        }
        let n = queries[0].len();
        check_same_len(queries.iter().copied().enumerate(), n)?;
        let mut p = vec![0.0f32; n];
        for (q, &w) in queries.iter().zip(&self.weights) {
            for (p, x) in p.iter_mut().zip(q.iter()) {
                *p += w * x;
            }
        }
        Ok(p)
    }
}

/// The decoder for one parity with target weights w: `F(X_j) ~= (Fp(P) - sum_{i != j} w_i
/// F(X_i)) / w_j`. With all weights 1 it is ParM's [`crate::SubtractionDecoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSubtractionDecoder {
    weights: Vec<f32>,
}

impl WeightedSubtractionDecoder {
    pub fn new(weights: Vec<f32>) -> Self {
        Self { weights }
    }
}

impl Decoder for WeightedSubtractionDecoder {
    fn decode(&self, parity_output: &[f32], outputs: &[Option<&[f32]>]) -> Result<(usize, Vec<f32>), CodeError> {
        if outputs.len() != self.weights.len() {
            return Err(CodeError::WrongCount { expected: self.weights.len(), got: outputs.len() });
        }
        crate::addition::subtract_weighted(parity_output, outputs, |i| self.weights[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A linear "model": F(x) = W x, W m x n.
    fn apply(w: &[f32], m: usize, x: &[f32]) -> Vec<f32> {
        let n = x.len();
        (0..m).map(|i| (0..n).map(|t| w[i * n + t] * x[t]).sum()).collect()
    }

    proptest! {
        /// For linear F with Fp_l = F, any e <= r erasures are decoded exactly from any e
        /// surviving parities.
        #[test]
        fn any_r_erasures_decode_exactly_for_linear_f(
            k in 1usize..13, r in 1usize..4, n in 1usize..6, m in 1usize..5,
            seed in 0u64..1000, erase_mask in 0u32..4096, parity_mask in 0u32..8,
        ) {
            let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0 };
            let w: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let xs: Vec<Vec<f32>> = (0..k).map(|_| (0..n).map(|_| rnd()).collect()).collect();
            let code = LinearCode::vandermonde(k, r).unwrap();
            let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
            let ys: Vec<Vec<f32>> = xs.iter().map(|x| apply(&w, m, x)).collect();
            let py: Vec<Vec<f32>> = (0..r).map(|l| apply(&w, m, &code.encoder(l).encode(&refs).unwrap())).collect();
            let lost_parities: Vec<usize> = (0..r).filter(|l| parity_mask >> l & 1 == 1).collect();
            let alive = r - lost_parities.len();
            let erased: Vec<usize> = (0..k).filter(|j| erase_mask >> j & 1 == 1).take(alive).collect();
            let outputs: Vec<Option<&[f32]>> = (0..k).map(|j| (!erased.contains(&j)).then(|| ys[j].as_slice())).collect();
            let pouts: Vec<Option<&[f32]>> = (0..r).map(|l| (!lost_parities.contains(&l)).then(|| py[l].as_slice())).collect();
            let dec = code.decode(&pouts, &outputs).unwrap();
            prop_assert_eq!(dec.len(), erased.len());
            for (j, v) in dec {
                for (a, b) in v.iter().zip(&ys[j]) {
                    prop_assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "j {} got {} want {}", j, a, b);
                }
            }
        }

        #[test]
        fn weighted_decoder_matches_code(k in 1usize..10, seed in 0u64..100) {
            let code = LinearCode::vandermonde(k, 2).unwrap();
            let enc = code.encoder(1);
            let ys: Vec<Vec<f32>> = (0..k).map(|j| vec![(j as f32 + seed as f32).sin(), 1.0]).collect();
            let w = enc.weights();
            let y: Vec<f32> = (0..2).map(|t| (0..k).map(|j| w[j] * ys[j][t]).sum()).collect();
            let lost = seed as usize % k;
            let outputs: Vec<Option<&[f32]>> = (0..k).map(|j| (j != lost).then(|| ys[j].as_slice())).collect();
            let (j, v) = WeightedSubtractionDecoder::new(w).decode(&y, &outputs).unwrap();
            prop_assert_eq!(j, lost);
            prop_assert!((v[0] - ys[lost][0]).abs() < 1e-4 && (v[1] - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn too_many_erasures_and_parity0_is_addition() {
        let code = LinearCode::vandermonde(3, 1).unwrap();
        assert_eq!(code.encoder(0).weights(), vec![1.0; 3]);
        let y = [1.0f32];
        let err = code.decode(&[Some(&y)], &[None, None, Some(&y)]).unwrap_err();
        assert_eq!(err, CodeError::TooManyErasures { erasures: 2, parities: 1 });
        assert!(code.decode(&[None], &[Some(&y), Some(&y), Some(&y)]).unwrap().is_empty());
    }
}
