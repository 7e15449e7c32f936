//! Checking a coding group's outputs against its code: wrong outputs, not only missing ones.
//!
//! When every prediction Y_j and every redundant output R_l of a group is in, the code gives
//! r more equations than unknowns. Their residual (the *syndrome*)
//!
//! ```text
//! e_l = R_l - sum_j c[l][j] Y_j        (l = 0..r, one vector of m values per row)
//! ```
//!
//! is the parity models' own error when every output is right, and grows by
//! `-c[l][j] * delta` when member j's output is off by `delta`. So:
//!
//! - its size ([`Check::score`], RMS per value) says whether the group looks wrong at all
//!   (r = 1: something in the group is wrong, not which member);
//! - with r >= 2 the direction of e across the r parities says which member: a single wrong
//!   member j makes e (per value) parallel to the column `c[.][j]`, so the member whose column
//!   explains most of e's energy is located ([`Check::located`]). This is syndrome decoding
//!   (Roth, "Introduction to Coding Theory", 2006) in its real-number form, as for analog
//!   codes (Marvasti et al., "A unified approach to sparse signal processing", 2012),
//!   applied here to learned parity outputs, where e is never exactly zero, so the caller
//!   calibrates what "large" means (the frontend compares the score to its running median).
//!
//! ApproxIFER (Soleymani et al., AAAI 2022, arXiv 2109.09868) locates wrong outputs of
//! Berrut-coded groups with more redundant queries; this check covers ParM's parity code and
//! the r-parity linear code, whose redundant outputs are linear in the predictions.

/// The verdict of [`check_rows`] on one complete coding group.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// RMS of the syndrome per value: `sqrt(sum e^2 / (r * rows * m))`, in the units of the
    /// model's outputs (logits). About the parity models' error on a healthy group.
    pub score: f32,
    /// The same RMS per redundant output (`[r]`): parity models of different coefficients
    /// err by different amounts, so a caller may weigh them apart.
    pub per_output: Vec<f32>,
    /// With r >= 2 redundant outputs: `(j, share)`, the member whose single wrong output
    /// explains the largest share (in [0, 1]) of the syndrome's energy, and that share.
    /// `None` with r = 1 (any member could be the wrong one) or a zero syndrome.
    pub located: Option<(usize, f32)>,
    /// The syndrome itself: per redundant output l, `rows * m` values, row-major
    /// (`[r][rows * m]`), for a caller that scores it against its own noise model
    /// ([`NoiseModel`]).
    pub syndrome: Vec<Vec<f32>>,
    /// m, the values per row.
    pub row_len: usize,
    /// Per member (`[k]`): whether the code disputes its top-1 class, that is, some row of the
    /// member's own output has another largest value than the same row corrected as if the
    /// member were the group's only wrong one (`y + c_j . e / |c_j|^2` per value, the
    /// least-squares correction; with one parity, the prediction decoded from the parity
    /// output). ParM's decoder answers a missing prediction with exactly this; a wrong output
    /// that changes the top-1 class is disputed almost always (99.5% in `parm bench
    /// --wrong-outputs`), a right one only where the parity model's own error moves the top-1
    /// class (29% of healthy groups there). False for padding and non-candidates.
    pub disputed: Vec<bool>,
}

/// Checks a complete group, row by row. `coeffs[l][j]` is the code's coefficient of member j
/// in redundant output l (r x k; ParM's addition code: one row of ones); `data(j, i)` is row
/// i of member j's output (`[m]`, padding included); `redundant(l, i)` is row i of redundant
/// output l (`[m]`); `candidate(j, i)` says whether member j's own row i could be wrong
/// (false for padding, which is known). `rows` rows of `m` values each.
///
/// Returns `None` if any row is missing or of another length than `m`.
pub fn check_rows<'a>(
    coeffs: &[Vec<f64>],
    rows: usize,
    m: usize,
    data: impl Fn(usize, usize) -> Option<&'a [f32]>,
    redundant: impl Fn(usize, usize) -> Option<&'a [f32]>,
    candidate: impl Fn(usize, usize) -> bool,
) -> Option<Check> {
    let r = coeffs.len();
    let k = coeffs.first()?.len();
    let norms: Vec<f64> = (0..k).map(|j| coeffs.iter().map(|c| c[j] * c[j]).sum()).collect();
    let mut energy = 0.0f64;
    // Energy of e along member j's column, summed over the values j could have got wrong.
    let mut along = vec![0.0f64; k];
    let mut e = vec![0.0f64; r];
    let mut per_output = vec![0.0f64; r];
    let mut syndrome = vec![Vec::with_capacity(rows * m); r];
    let mut disputed = vec![false; k];
    // Per member, the row corrected as if it alone were wrong.
    let mut corrected = vec![vec![0.0f64; m]; k];
    for i in 0..rows {
        let ys: Vec<&[f32]> = (0..k).map(|j| data(j, i).filter(|y| y.len() == m)).collect::<Option<_>>()?;
        let rs: Vec<&[f32]> = (0..r).map(|l| redundant(l, i).filter(|y| y.len() == m)).collect::<Option<_>>()?;
        // The members whose own row i could be wrong.
        let suspects: Vec<usize> = (0..k).filter(|&j| norms[j] > 0.0 && candidate(j, i)).collect();
        for t in 0..m {
            for l in 0..r {
                e[l] = rs[l][t] as f64 - (0..k).map(|j| coeffs[l][j] * ys[j][t] as f64).sum::<f64>();
                energy += e[l] * e[l];
                per_output[l] += e[l] * e[l];
                syndrome[l].push(e[l] as f32);
            }
            for &j in &suspects {
                let dot: f64 = (0..r).map(|l| coeffs[l][j] * e[l]).sum();
                along[j] += dot * dot / norms[j];
                corrected[j][t] = ys[j][t] as f64 + dot / norms[j];
            }
        }
        for &j in &suspects {
            disputed[j] |= argmax(ys[j].iter().map(|&v| v as f64)) != argmax(corrected[j].iter().copied());
        }
    }
    let values = (r * rows * m).max(1) as f64;
    let score = (energy / values).sqrt() as f32;
    let located = (r >= 2 && energy > 0.0)
        .then(|| along.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, &a)| (j, (a / energy).min(1.0) as f32)))
        .flatten();
    let per_output = per_output.iter().map(|v| (v / (rows * m).max(1) as f64).sqrt() as f32).collect();
    Some(Check { score, per_output, located, syndrome, row_len: m, disputed })
}

/// The index of the largest value (the first of equals; 0 for an empty row).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    values.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best }).0
}

/// Groups observed before [`NoiseModel::score`] answers.
const NOISE_WARM_UP: u64 = 64;
/// Observations weigh at least 1/this each: the model follows the last few hundred groups.
const NOISE_MEMORY: f64 = 256.0;
/// Observations between two inversions of the covariance.
const NOISE_REFRESH: u64 = 16;
/// Largest m whose full covariance is kept (m x m per redundant output); above it, only the
/// variances.
const NOISE_FULL_MAX: usize = 64;

/// The syndrome of healthy groups, per redundant output: its running mean and covariance
/// across the m values of a row, and the whitened score of a new group (the Mahalanobis norm
/// per value, `sqrt(mean over rows and outputs of (e - mu)^T S^-1 (e - mu) / m)`): the
/// generalized likelihood-ratio statistic for an unknown shift of a Gaussian mean (Kay,
/// "Fundamentals of Statistical Signal Processing: Detection Theory", 1998, ch. 6). A learned
/// parity model errs more in some directions than others (all logits together, some classes
/// more than others); whitening weighs a wrong output's deviation by how unusual it is there.
#[derive(Debug, Clone)]
pub struct NoiseModel {
    m: usize,
    full: bool,
    seen: u64,
    mean: Vec<Vec<f64>>,
    second: Vec<Vec<f64>>,
    precision: Vec<Vec<f64>>,
}

impl NoiseModel {
    /// A model for rows of `m` values and `r` redundant outputs, with nothing observed.
    pub fn new(m: usize, r: usize) -> Self {
        let full = m <= NOISE_FULL_MAX;
        let cells = if full { m * m } else { m };
        NoiseModel { m, full, seen: 0, mean: vec![vec![0.0; m]; r], second: vec![vec![0.0; cells]; r], precision: vec![Vec::new(); r] }
    }

    /// Takes a healthy group's syndrome into the estimate (ignored if of another shape).
    pub fn observe(&mut self, check: &Check) {
        if !self.fits(check) {
            return;
        }
        let rows = check.syndrome[0].len() / self.m;
        for (l, e) in check.syndrome.iter().enumerate() {
            for x in e.chunks(self.m) {
                let w = (1.0 / (self.seen as f64 * rows as f64 + 1.0)).max(1.0 / (NOISE_MEMORY * rows as f64));
                for (mu, &v) in self.mean[l].iter_mut().zip(x) {
                    *mu += w * (v as f64 - *mu);
                }
                if self.full {
                    for a in 0..self.m {
                        for b in 0..self.m {
                            let c = &mut self.second[l][a * self.m + b];
                            *c += w * (x[a] as f64 * x[b] as f64 - *c);
                        }
                    }
                } else {
                    for (c, &v) in self.second[l].iter_mut().zip(x) {
                        *c += w * (v as f64 * v as f64 - *c);
                    }
                }
            }
        }
        self.seen += 1;
        if self.seen >= NOISE_WARM_UP && (self.seen - NOISE_WARM_UP).is_multiple_of(NOISE_REFRESH) {
            self.refresh();
        }
    }

    /// The whitened score of `check`'s syndrome, `None` before the model has seen
    /// [`NOISE_WARM_UP`] groups or for a syndrome of another shape.
    pub fn score(&self, check: &Check) -> Option<f32> {
        if !self.fits(check) || self.precision[0].is_empty() {
            return None;
        }
        let m = self.m;
        let (mut total, mut n) = (0.0f64, 0usize);
        for (l, e) in check.syndrome.iter().enumerate() {
            let p = &self.precision[l];
            for x in e.chunks(m) {
                let d: Vec<f64> = x.iter().zip(&self.mean[l]).map(|(&v, mu)| v as f64 - mu).collect();
                total += if self.full {
                    (0..m).map(|a| d[a] * (0..m).map(|b| p[a * m + b] * d[b]).sum::<f64>()).sum::<f64>()
                } else {
                    d.iter().zip(p).map(|(v, q)| v * v * q).sum::<f64>()
                };
                n += 1;
            }
        }
        Some((total / (n * m).max(1) as f64).max(0.0).sqrt() as f32)
    }

    fn fits(&self, check: &Check) -> bool {
        check.row_len == self.m
            && check.syndrome.len() == self.mean.len()
            && check.syndrome.iter().all(|e| !e.is_empty() && e.len() % self.m == 0)
    }

    /// The inverse covariance per redundant output, with a ridge of 1e-3 of the mean variance
    /// so that a direction the healthy syndromes never moved in does not get infinite weight.
    /// A syndrome that does not vary (a parity model exact up to a fixed error) has no noise to
    /// model: no score then.
    fn refresh(&mut self) {
        let m = self.m;
        for l in 0..self.mean.len() {
            let mu = &self.mean[l];
            let second = |a: usize| if self.full { self.second[l][a * m + a] } else { self.second[l][a] };
            let var: Vec<f64> = (0..m).map(|a| (second(a) - mu[a] * mu[a]).max(0.0)).collect();
            let total: f64 = var.iter().sum();
            if total <= 1e-6 * (0..m).map(second).sum::<f64>() {
                self.precision = vec![Vec::new(); self.mean.len()];
                return;
            }
            let ridge = 1e-3 * total / m as f64 + 1e-12;
            if !self.full {
                self.precision[l] = var.iter().map(|v| 1.0 / (v + ridge)).collect();
                continue;
            }
            let mut cov: Vec<Vec<f64>> = (0..m).map(|a| (0..m).map(|b| self.second[l][a * m + b] - mu[a] * mu[b]).collect()).collect();
            for (a, row) in cov.iter_mut().enumerate() {
                row[a] += ridge;
            }
            let mut inv: Vec<Vec<f64>> = (0..m).map(|a| (0..m).map(|b| if a == b { 1.0 } else { 0.0 }).collect()).collect();
            crate::linear::solve_in_place(&mut cov, &mut inv);
            self.precision[l] = inv.into_iter().flatten().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parity model whose error moves every value together (a common shift, which a
    /// classifier's logits are blind to) hides a class swap in the raw RMS; whitened by the
    /// healthy syndromes' covariance, the swap stands out.
    #[test]
    fn whitening_exposes_a_deviation_where_healthy_syndromes_never_go() {
        let m = 4;
        let mut seed = 7u64;
        let mut noise = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let syndrome =
            |e: Vec<f32>| Check { score: 0.0, per_output: vec![0.0], located: None, syndrome: vec![e], row_len: m, disputed: vec![false] };
        let rms = |c: &Check| (c.syndrome[0].iter().map(|v| v * v).sum::<f32>() / m as f32).sqrt();
        let mut model = NoiseModel::new(m, 1);
        let healthy = |n: &mut dyn FnMut() -> f32| {
            let shift = 4.0 * n();
            syndrome((0..m).map(|_| shift + 0.01 * n()).collect())
        };
        for _ in 0..NOISE_WARM_UP {
            assert_eq!(model.score(&healthy(&mut noise)), None, "no score before the warm-up");
            model.observe(&healthy(&mut noise));
        }
        let typical = healthy(&mut noise);
        let swap = syndrome(vec![0.3, -0.3, 0.0, 0.0]);
        assert!(rms(&swap) < rms(&typical) || rms(&typical) < 0.5, "raw RMS: the swap {} against {}", rms(&swap), rms(&typical));
        let (w_swap, w_typical) = (model.score(&swap).unwrap(), model.score(&typical).unwrap());
        assert!(w_swap > 5.0 * w_typical && w_swap > 5.0, "whitened: the swap {w_swap} against a healthy group's {w_typical}");
        assert_eq!(model.score(&Check { row_len: 3, ..swap }), None, "another shape is not scored");
    }

    fn run(coeffs: &[Vec<f64>], ys: &[Vec<f32>], rs: &[Vec<f32>]) -> Check {
        let m = ys[0].len();
        check_rows(coeffs, 1, m, |j, _| Some(&ys[j][..]), |l, _| Some(&rs[l][..]), |_, _| true).unwrap()
    }

    fn encode(coeffs: &[Vec<f64>], ys: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let m = ys[0].len();
        coeffs.iter().map(|c| (0..m).map(|t| c.iter().zip(ys).map(|(w, y)| *w as f32 * y[t]).sum()).collect()).collect()
    }

    #[test]
    fn consistent_group_scores_zero() {
        let coeffs = vec![vec![1.0; 3]];
        let ys = vec![vec![1.0, 2.0], vec![3.0, -1.0], vec![0.5, 0.5]];
        let check = run(&coeffs, &ys, &encode(&coeffs, &ys));
        assert!(check.score < 1e-6, "{check:?}");
        assert_eq!(check.located, None);
    }

    #[test]
    fn one_parity_flags_but_cannot_locate() {
        let coeffs = vec![vec![1.0; 2]];
        let ys = vec![vec![1.0, 2.0], vec![3.0, -1.0]];
        let rs = encode(&coeffs, &ys);
        let wrong = vec![ys[0].clone(), vec![-1.0, 3.0]];
        let check = run(&coeffs, &wrong, &rs);
        // e = [3 - 0, 1 - 5] = [4, -4]: RMS 4.
        assert!((check.score - 4.0).abs() < 1e-5, "{check:?}");
        assert_eq!(check.located, None);
        // Decoded from the parity, member 1 is [3, -1] (class 0, not its 1), and member 0, were
        // it the wrong one, [5, -2]: both are disputed, one parity cannot say which.
        assert_eq!(check.disputed, vec![true, true]);
    }

    /// The syndrome may be large while no member's top-1 class is in doubt: a doubled output
    /// keeps its class, and the parity models' small error moves none.
    #[test]
    fn a_wrong_output_that_keeps_its_class_is_not_disputed() {
        let coeffs = vec![vec![1.0; 2]];
        let ys = vec![vec![1.0, 5.0, 2.0], vec![4.0, -1.0, 0.0]];
        let mut rs = encode(&coeffs, &ys);
        rs[0][2] += 0.3;
        assert_eq!(run(&coeffs, &ys, &rs).disputed, vec![false, false]);
        let doubled = vec![ys[0].clone(), ys[1].iter().map(|v| 2.0 * v).collect()];
        let check = run(&coeffs, &doubled, &rs);
        assert!(check.score > 1.0, "{check:?}");
        assert_eq!(check.disputed, vec![false, false], "{check:?}");
    }

    #[test]
    fn two_parities_locate_the_wrong_member_among_four() {
        let code = crate::LinearCode::vandermonde(4, 2).unwrap();
        let coeffs: Vec<Vec<f64>> = (0..2).map(|l| (0..4).map(|j| code.coeff(l, j)).collect()).collect();
        let ys: Vec<Vec<f32>> = (0..4).map(|j| (0..10).map(|t| ((j * 7 + t * 3) % 11) as f32 - 5.0).collect()).collect();
        let mut rs = encode(&coeffs, &ys);
        // The parity models' own error: small noise on every value.
        for (l, r) in rs.iter_mut().enumerate() {
            for (t, v) in r.iter_mut().enumerate() {
                *v += 0.05 * (((l * 13 + t * 5) % 7) as f32 - 3.0);
            }
        }
        let clean = run(&coeffs, &ys, &rs);
        for bad in 0..4 {
            let mut wrong = ys.clone();
            wrong[bad].rotate_left(1); // a permuted class
            let check = run(&coeffs, &wrong, &rs);
            assert!(check.score > 10.0 * clean.score, "{check:?} vs clean {clean:?}");
            let (j, share) = check.located.unwrap();
            assert_eq!(j, bad, "{check:?}");
            assert!(share > 0.95, "{check:?}");
        }
    }

    #[test]
    fn padding_is_never_located_and_missing_rows_give_none() {
        let coeffs = vec![vec![1.0, 1.0], vec![1.0, 2.0]];
        let ys = [vec![1.0], vec![2.0]];
        let rs = [vec![3.0], vec![9.0]]; // the syndrome (0, 4) is off in parity 1 only
        let m = 1;
        let check = check_rows(&coeffs, 1, m, |j, _| Some(&ys[j][..]), |l, _| Some(&rs[l][..]), |j, _| j == 0).unwrap();
        assert_eq!(check.located.map(|(j, _)| j), Some(0), "only member 0 is a candidate");
        assert!(check_rows(&coeffs, 1, m, |_, _| None, |l, _| Some(&rs[l][..]), |_, _| true).is_none());
        assert!(check_rows(&coeffs, 1, 2, |j, _| Some(&ys[j][..]), |l, _| Some(&rs[l][..]), |_, _| true).is_none());
    }
}
