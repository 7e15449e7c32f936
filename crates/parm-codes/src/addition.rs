use crate::{CodeError, Decoder, Encoder, check_same_len};

/// The addition encoder: P = X1 + ... + Xk, element-wise.
///
/// Source: ParM (SOSP 2019) §3.2, "general encoder". Works for any input shape; for images it
/// sums pixel by pixel and channel by channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdditionEncoder {
    k: usize,
}

impl AdditionEncoder {
    /// Errors: [`CodeError::ZeroK`] if `k == 0`.
    pub fn new(k: usize) -> Result<Self, CodeError> {
        if k == 0 {
            return Err(CodeError::ZeroK);
        }
        Ok(Self { k })
    }
}

impl Encoder for AdditionEncoder {
    fn k(&self) -> usize {
        self.k
    }

    fn name(&self) -> &'static str {
        "addition"
    }

    fn encode(&self, queries: &[&[f32]]) -> Result<Vec<f32>, CodeError> {
        if queries.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: queries.len() });
        }
        let n = queries[0].len();
        check_same_len(queries.iter().copied().enumerate(), n)?;
        let mut parity = queries[0].to_vec();
        for q in &queries[1..] {
            for (p, x) in parity.iter_mut().zip(q.iter()) {
                *p += x;
            }
        }
        Ok(parity)
    }
}

/// The subtraction decoder: F(Xj) ~= Fp(P) - sum_{i != j} F(Xi).
///
/// Source: ParM (SOSP 2019) §3.1. Exact when F is linear and Fp = F; otherwise as good as the
/// parity model's approximation Fp(X1 + ... + Xk) ~= F(X1) + ... + F(Xk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubtractionDecoder;

impl Decoder for SubtractionDecoder {
    fn decode(&self, parity_output: &[f32], outputs: &[Option<&[f32]>]) -> Result<(usize, Vec<f32>), CodeError> {
        subtract_weighted(parity_output, outputs, |_| 1.0)
    }
}

/// Decodes the one unavailable output j of a weighted sum: F(Xj) ~= (Fp(P) - sum_{i != j}
/// w_i F(Xi)) / w_j. Unit weights give ParM's subtraction decoder (§3.1).
///
/// Errors: [`CodeError::NotOneErasure`] unless exactly one output is `None`,
/// [`CodeError::ShapeMismatch`] if an output's length differs from the parity output's.
pub(crate) fn subtract_weighted(
    parity_output: &[f32],
    outputs: &[Option<&[f32]>],
    weight: impl Fn(usize) -> f32,
) -> Result<(usize, Vec<f32>), CodeError> {
    let missing: Vec<usize> = (0..outputs.len()).filter(|&i| outputs[i].is_none()).collect();
    if missing.len() != 1 {
        return Err(CodeError::NotOneErasure(missing.len()));
    }
    let present = outputs.iter().enumerate().filter_map(|(i, o)| o.map(|o| (i, o)));
    check_same_len(present.clone(), parity_output.len())?;
    let mut out = parity_output.to_vec();
    for (i, o) in present {
        let w = weight(i);
        for (r, y) in out.iter_mut().zip(o.iter()) {
            *r -= w * y;
        }
    }
    let wj = weight(missing[0]);
    if wj != 1.0 {
        out.iter_mut().for_each(|v| *v /= wj);
    }
    Ok((missing[0], out))
}
