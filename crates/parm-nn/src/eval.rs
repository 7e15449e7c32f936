//! Accuracy evaluation: available, degraded-mode and overall accuracy (ParM SOSP 2019 §5.2).

use burn::tensor::Device;
use parm_codes::{ApproxiferCode, BerrutCode, Decoder, Encoder, LinearCode, WeightedSubtractionDecoder};
use parm_data::Split;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::Serialize;

use crate::{Classifier, argmax, tensor2, to_vec};

/// Rows per forward pass in evaluation.
const EVAL_BATCH: usize = 1000;

/// Logits of `model` on `n` row-major inputs of `dim` values: `[n, classes]` flattened.
pub fn logits(model: &(impl Classifier + ?Sized), inputs: &[f32], n: usize, dim: usize, device: &Device) -> Vec<f32> {
    let mut out = Vec::new();
    for start in (0..n).step_by(EVAL_BATCH) {
        let rows = EVAL_BATCH.min(n - start);
        let x = inputs[start * dim..(start + rows) * dim].to_vec();
        out.extend(to_vec(model.classify(tensor2(x, rows, dim, device))));
    }
    out
}

/// Top-1 accuracy (fraction) of flattened `[n, classes]` logits against `labels`.
pub fn accuracy(logits: &[f32], labels: &[u8], classes: usize) -> f64 {
    let correct = logits.chunks(classes).zip(labels).filter(|(l, y)| argmax(l) == Some(**y as usize)).count();
    correct as f64 / labels.len().max(1) as f64
}

/// Splits `0..n` into `n / k` coding groups of k indices after a seeded shuffle; the
/// remainder (fewer than k) is left out.
pub fn coding_groups(n: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order.chunks_exact(k).map(|c| c.to_vec()).collect()
}

/// Degraded-mode accuracy A_d: for every coding group of `split` and every single-erasure
/// pattern, reconstructs the erased prediction as Fp(P) - sum of the others (ParM §3.1) and
/// scores its argmax against the true label. `deployed_logits`: F on `split`, `[n, classes]`.
pub fn degraded_accuracy(
    deployed_logits: &[f32],
    parity: &(impl Classifier + ?Sized),
    split: &Split,
    encoder: &dyn Encoder,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    padded_degraded_accuracy(deployed_logits, None, parity, split, encoder, encoder.k(), classes, seed, device)
}

/// Degraded-mode accuracy of partly filled coding groups: `members` real queries (< k) padded
/// with all-zero queries, whose prediction F(0) (`zero_logits`, `[classes]`) the decoder
/// subtracts like any other available output. This is how the frontend protects a group it
/// closes on its timeout. With `zero_logits = None`, `members` must equal k.
#[allow(clippy::too_many_arguments)]
pub fn padded_degraded_accuracy(
    deployed_logits: &[f32],
    zero_logits: Option<&[f32]>,
    parity: &(impl Classifier + ?Sized),
    split: &Split,
    encoder: &dyn Encoder,
    members: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let k = encoder.k();
    let groups = coding_groups(split.n, members, seed);
    let parity_out = parity_outputs(parity, split, &groups, encoder, device);
    let decoder = WeightedSubtractionDecoder::new(encoder.weights());
    // A per-query parity model (ParityConfig::per_query) has k x classes outputs.
    let width = parity_out.len() / groups.len().max(1);
    let per_query = width == k * classes && k > 1;
    let mut correct = 0usize;
    for (g, fp) in groups.iter().zip(parity_out.chunks(width.max(1))) {
        for lost in 0..members {
            if per_query {
                let rec = &fp[lost * classes..(lost + 1) * classes];
                correct += (argmax(rec) == Some(split.labels[g[lost]] as usize)) as usize;
                continue;
            }
            let mut outputs: Vec<Option<&[f32]>> =
                g.iter().enumerate().map(|(j, &i)| (j != lost).then(|| &deployed_logits[i * classes..(i + 1) * classes])).collect();
            outputs.resize(k, zero_logits);
            let (_, rec) = decoder.decode(fp, &outputs).expect("one erasure");
            correct += (argmax(&rec) == Some(split.labels[g[lost]] as usize)) as usize;
        }
    }
    correct as f64 / (groups.len() * members).max(1) as f64
}

/// Degraded-mode accuracy of a per-query parity model (collage: [`crate::cells::CellMlp`]
/// over the concatenation encoder) with `erasures` predictions of each group unavailable:
/// every unavailable prediction is its own cell's output, so one parity query answers any
/// number of them. Scored over every pattern of `erasures` members of every coding group.
///
/// Panics if `parity` does not output `k x classes` values per query (not a per-query model).
#[allow(clippy::too_many_arguments)]
pub fn per_query_degraded_accuracy(
    parity: &(impl Classifier + ?Sized),
    split: &Split,
    encoder: &dyn Encoder,
    erasures: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let k = encoder.k();
    let groups = coding_groups(split.n, k, seed);
    let out = parity_outputs(parity, split, &groups, encoder, device);
    assert_eq!(out.len(), groups.len() * k * classes, "a per-query parity model outputs k x classes per query");
    let patterns = erasure_patterns(k, erasures);
    let (mut correct, mut total) = (0usize, 0usize);
    for (g, fp) in groups.iter().zip(out.chunks(k * classes)) {
        for lost in &patterns {
            for &j in lost {
                correct += (argmax(&fp[j * classes..(j + 1) * classes]) == Some(split.labels[g[j]] as usize)) as usize;
                total += 1;
            }
        }
    }
    correct as f64 / total.max(1) as f64
}

/// Degraded-mode accuracy of the systematic Berrut code ([`BerrutCode`], ApproxIFER made
/// systematic): for every coding group of `split`, F (`deployed`) runs on the S blended
/// queries; then for every pattern of `erasures` (1..=S) unavailable predictions among the k
/// (all S blended outputs available; patterns sampled, at most `max_patterns` per group, when
/// there are more), each unavailable prediction is interpolated and scored against its
/// true label. `deployed_logits`: F on `split`, `[n, classes]`.
#[allow(clippy::too_many_arguments)]
pub fn berrut_degraded_accuracy(
    deployed_logits: &[f32],
    deployed: &(impl Classifier + ?Sized),
    split: &Split,
    code: &BerrutCode,
    erasures: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let (k, s) = (code.k(), code.s());
    assert!((1..=s.min(k)).contains(&erasures), "1 <= erasures <= min(S, k)");
    let groups = coding_groups(split.n, k, seed);
    let mut blended = Vec::with_capacity(groups.len() * s * split.dim());
    for g in &groups {
        let queries: Vec<&[f32]> = g.iter().map(|&i| split.image(i)).collect();
        for b in code.encode(&queries).expect("members have equal shape") {
            blended.extend(b);
        }
    }
    let blended_out = logits(deployed, &blended, groups.len() * s, split.dim(), device);
    let patterns = erasure_patterns(k, erasures);
    let max_patterns = 64;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xBE77);
    let (mut correct, mut total) = (0usize, 0usize);
    for (gi, g) in groups.iter().enumerate() {
        let chosen: Vec<&Vec<usize>> = if patterns.len() <= max_patterns {
            patterns.iter().collect()
        } else {
            patterns.choose_multiple(&mut rng, max_patterns).collect()
        };
        let b: Vec<Option<&[f32]>> = (0..s).map(|t| Some(&blended_out[(gi * s + t) * classes..(gi * s + t + 1) * classes])).collect();
        for lost in chosen {
            let outputs: Vec<Option<&[f32]>> = g
                .iter()
                .enumerate()
                .map(|(j, &i)| (!lost.contains(&j)).then(|| &deployed_logits[i * classes..(i + 1) * classes]))
                .collect();
            for (j, rec) in code.decode(&outputs, &b).expect("at most S erasures") {
                correct += (argmax(&rec) == Some(split.labels[g[j]] as usize)) as usize;
                total += 1;
            }
        }
    }
    correct as f64 / total.max(1) as f64
}

/// Accuracy of ApproxIFER as published (non-systematic, [`ApproxiferCode`]): for every coding
/// group F runs on the N = k + S coded queries; for each of up to 16 sampled patterns of S
/// unavailable instances, all k predictions are interpolated and scored against their true
/// labels. This is both its A_a and its A_d: every answer is decoded.
pub fn approxifer_accuracy(
    deployed: &(impl Classifier + ?Sized),
    split: &Split,
    code: &ApproxiferCode,
    s: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let n = code.n();
    let k = n - s;
    let groups = coding_groups(split.n, k, seed);
    let mut coded = Vec::with_capacity(groups.len() * n * split.dim());
    for g in &groups {
        let queries: Vec<&[f32]> = g.iter().map(|&i| split.image(i)).collect();
        for b in code.encode(&queries).expect("members have equal shape") {
            coded.extend(b);
        }
    }
    let out = logits(deployed, &coded, groups.len() * n, split.dim(), device);
    let patterns = erasure_patterns(n, s);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xA99);
    let (mut correct, mut total) = (0usize, 0usize);
    for (gi, g) in groups.iter().enumerate() {
        let chosen: Vec<&Vec<usize>> = patterns.choose_multiple(&mut rng, 16).collect();
        for lost in chosen {
            let outputs: Vec<Option<&[f32]>> =
                (0..n).map(|i| (!lost.contains(&i)).then(|| &out[(gi * n + i) * classes..(gi * n + i + 1) * classes])).collect();
            for (j, rec) in code.decode(&outputs).expect("S erasures").iter().enumerate() {
                correct += (argmax(rec) == Some(split.labels[g[j]] as usize)) as usize;
                total += 1;
            }
        }
    }
    correct as f64 / total.max(1) as f64
}

/// Degraded-mode accuracy of an r-parity [`LinearCode`] with one trained parity model per
/// parity (`parities[l]` for `code.encoder(l)`): for every coding group and every pattern of
/// `erasures` (<= r) unavailable predictions (all parity outputs available), the unavailable
/// predictions are decoded jointly ([`LinearCode::decode`]) and scored against their labels.
#[allow(clippy::too_many_arguments)]
pub fn linear_degraded_accuracy(
    deployed_logits: &[f32],
    parities: &[&dyn Classifier],
    split: &Split,
    code: &LinearCode,
    erasures: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    let k = code.k();
    let groups = coding_groups(split.n, k, seed);
    let outs: Vec<Vec<f32>> =
        parities.iter().enumerate().map(|(l, p)| parity_outputs(*p, split, &groups, &code.encoder(l), device)).collect();
    let patterns = erasure_patterns(k, erasures);
    let (mut correct, mut total) = (0usize, 0usize);
    for (gi, g) in groups.iter().enumerate() {
        let pout: Vec<Option<&[f32]>> = outs.iter().map(|o| Some(&o[gi * classes..(gi + 1) * classes])).collect();
        for lost in &patterns {
            let outputs: Vec<Option<&[f32]>> = g
                .iter()
                .enumerate()
                .map(|(j, &i)| (!lost.contains(&j)).then(|| &deployed_logits[i * classes..(i + 1) * classes]))
                .collect();
            for (j, rec) in code.decode(&pout, &outputs).expect("at most r erasures") {
                correct += (argmax(&rec) == Some(split.labels[g[j]] as usize)) as usize;
                total += 1;
            }
        }
    }
    correct as f64 / total.max(1) as f64
}

/// `model` on the parity query of every coding group in `groups` (indices into `split`; a
/// group shorter than the encoder's k is padded with all-zero queries), row-major.
fn parity_outputs(
    model: &(impl Classifier + ?Sized),
    split: &Split,
    groups: &[Vec<usize>],
    encoder: &dyn Encoder,
    device: &Device,
) -> Vec<f32> {
    let zeros = vec![0.0f32; split.dim()];
    let mut x = Vec::with_capacity(groups.len() * split.dim());
    for g in groups {
        let mut queries: Vec<&[f32]> = g.iter().map(|&i| split.image(i)).collect();
        queries.resize(encoder.k(), &zeros);
        x.extend(encoder.encode(&queries).expect("members have equal shape"));
    }
    logits(model, &x, groups.len(), split.dim(), device)
}

/// Every subset of `e` indices out of `0..k`, in lexicographic order.
fn erasure_patterns(k: usize, e: usize) -> Vec<Vec<usize>> {
    fn rec(start: usize, k: usize, e: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == e {
            out.push(cur.clone());
            return;
        }
        for i in start..k {
            cur.push(i);
            rec(i + 1, k, e, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, k, e, &mut Vec::new(), &mut out);
    out
}

/// Accuracy of returning one fixed default prediction when a prediction is unavailable: the
/// share of the most frequent class (0.1 on the balanced Fashion-MNIST test set).
pub fn default_accuracy(labels: &[u8], classes: usize) -> f64 {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    *counts.iter().max().unwrap_or(&0) as f64 / labels.len().max(1) as f64
}

/// Overall accuracy A_o = (1 - f_u) A_a + f_u A_d (ParM §5.2), `f_u` the unavailable fraction.
pub fn overall_accuracy(available: f64, degraded: f64, f_u: f64) -> f64 {
    (1.0 - f_u) * available + f_u * degraded
}

/// The accuracy summary `parm eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    pub dataset: String,
    pub model: String,
    pub k: usize,
    pub encoder: String,
    pub available: f64,
    pub degraded: f64,
    /// `(members, A_d)` for partly filled groups of `members` < k queries padded with zeros.
    pub degraded_partial: Vec<(usize, f64)>,
    pub default: f64,
    /// `(f_u, A_o)` pairs.
    pub overall: Vec<(f64, f64)>,
}

impl AccuracyReport {
    /// A plain-text table of the report.
    pub fn table(&self) -> String {
        let mut s = format!("dataset {}  model {}  k {}  encoder {}\n", self.dataset, self.model, self.k, self.encoder);
        s += &format!("{:<34}{:>8.2}%\n", "available accuracy A_a", 100.0 * self.available);
        s += &format!("{:<34}{:>8.2}%\n", "degraded-mode accuracy A_d", 100.0 * self.degraded);
        for (m, a) in &self.degraded_partial {
            s += &format!("{:<34}{:>8.2}%\n", format!("A_d, partial group of {m}/{}", self.k), 100.0 * a);
        }
        s += &format!("{:<34}{:>8.2}%\n", "default baseline (degraded)", 100.0 * self.default);
        for (f, a) in &self.overall {
            s += &format!("{:<34}{:>8.2}%\n", format!("overall accuracy A_o, f_u = {}%", f * 100.0), 100.0 * a);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasure_patterns_are_all_subsets() {
        assert_eq!(erasure_patterns(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
        assert_eq!(erasure_patterns(12, 3).len(), 220);
        assert_eq!(erasure_patterns(4, 1).len(), 4);
    }
}
