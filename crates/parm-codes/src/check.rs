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
    for i in 0..rows {
        let ys: Vec<&[f32]> = (0..k).map(|j| data(j, i).filter(|y| y.len() == m)).collect::<Option<_>>()?;
        let rs: Vec<&[f32]> = (0..r).map(|l| redundant(l, i).filter(|y| y.len() == m)).collect::<Option<_>>()?;
        for t in 0..m {
            for l in 0..r {
                e[l] = rs[l][t] as f64 - (0..k).map(|j| coeffs[l][j] * ys[j][t] as f64).sum::<f64>();
                energy += e[l] * e[l];
                per_output[l] += e[l] * e[l];
            }
            for j in (0..k).filter(|&j| norms[j] > 0.0 && candidate(j, i)) {
                let dot: f64 = (0..r).map(|l| coeffs[l][j] * e[l]).sum();
                along[j] += dot * dot / norms[j];
            }
        }
    }
    let values = (r * rows * m).max(1) as f64;
    let score = (energy / values).sqrt() as f32;
    let located = (r >= 2 && energy > 0.0)
        .then(|| along.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, &a)| (j, (a / energy).min(1.0) as f32)))
        .flatten();
    let per_output = per_output.iter().map(|v| (v / (rows * m).max(1) as f64).sqrt() as f32).collect();
    Some(Check { score, per_output, located })
}

#[cfg(test)]
mod tests {
    use super::*;

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
