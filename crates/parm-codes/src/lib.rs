//! Erasure codes for prediction serving: coding groups, encoders and decoders.
//!
//! Plain tensors in, plain tensors out; no I/O. A query or a prediction is a flat,
//! row-major `&[f32]`; all members of one coding group have the same length.
//!
//! Source: Kosaian, Rashmi, Venkataraman, "Parity Models: Erasure-Coded Resilience for
//! Prediction Serving Systems", SOSP 2019 (arXiv 1905.00863), §3 (encoder, decoder) and
//! §4.2 (eager decoding in the frontend).

mod addition;
mod berrut;
mod check;
mod concatenation;
mod group;
mod linear;

pub use addition::{AdditionEncoder, SubtractionDecoder};
pub use berrut::{ApproxiferCode, BerrutCode, berrut_weights};
pub use check::{Check, NoiseModel, check_rows};
pub use concatenation::{ConcatenationEncoder, ImageShape, area_weights, concat_cells, concat_grid};
pub use group::{Answer, GroupCode, GroupState, Slot};
pub use linear::{LinearCode, LinearEncoder, WeightedSubtractionDecoder};

/// Errors of encoding and decoding; every one means the caller passed inconsistent tensors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodeError {
    #[error("coding group needs k = {expected} queries, got {got}")]
    WrongCount { expected: usize, got: usize },
    #[error("tensor {index} has {got} values, expected {expected} (all members of a coding group must have the same shape)")]
    ShapeMismatch { index: usize, expected: usize, got: usize },
    #[error("k must be at least 1")]
    ZeroK,
    #[error("unknown encoder '{0}' (known: addition, concatenation)")]
    UnknownEncoder(String),
    #[error("decoding needs exactly one unavailable prediction, found {0}")]
    NotOneErasure(usize),
    #[error("{erasures} unavailable predictions but only {parities} parity outputs to decode them")]
    TooManyErasures { erasures: usize, parities: usize },
    #[error("bad image shape: {0}")]
    BadShape(String),
}

/// Builds one parity query from the k queries of a coding group.
pub trait Encoder: Send + Sync {
    /// Number of queries per coding group.
    fn k(&self) -> usize;
    /// Short name used on the command line and in reports, e.g. `"addition"`.
    fn name(&self) -> &'static str;
    /// `queries`: k tensors of equal length n. Returns the parity query (length n).
    ///
    /// Errors: [`CodeError::WrongCount`] unless exactly k queries, [`CodeError::ShapeMismatch`]
    /// if lengths differ.
    fn encode(&self, queries: &[&[f32]]) -> Result<Vec<f32>, CodeError>;

    /// Weights w of the parity model's target `sum_j w_j F(X_j)` (all 1 for ParM's codes;
    /// see [`LinearCode`]). Decoding one erasure divides by the erased query's weight
    /// ([`WeightedSubtractionDecoder`]).
    fn weights(&self) -> Vec<f32> {
        vec![1.0; self.k()]
    }
}

/// Reconstructs an unavailable prediction from the parity model's output and the others.
pub trait Decoder: Send + Sync {
    /// `parity_output`: Fp(P), length m. `outputs`: the k deployed-model predictions of the
    /// group, exactly one `None` (the unavailable one), the rest of length m.
    /// Returns the index of the unavailable prediction and its reconstruction (length m).
    fn decode(&self, parity_output: &[f32], outputs: &[Option<&[f32]>]) -> Result<(usize, Vec<f32>), CodeError>;
}

/// Row-wise encoding of a coding group whose members are blocks of rows (ParM §3 applied per
/// row, as a batch is coded in the frontend): `blocks[j]` is member j, `[b_j, row_len]`
/// row-major. Returns the parity query `[n, row_len]`, n = max b_j, whose row i is
/// `encoder.encode(row i of every member)`, with an all-zero row where a member has no row i
/// and all-zero members for slots `blocks.len()..k` (their known output F(0) is then subtracted
/// by the decoder, see [`GroupState::fill_padding`]).
///
/// Errors: [`CodeError::WrongCount`] for no members or more than k, [`CodeError::ShapeMismatch`]
/// for a block that is not a whole number of rows, and any error of the encoder.
pub fn encode_rows(encoder: &dyn Encoder, blocks: &[&[f32]], row_len: usize) -> Result<Vec<f32>, CodeError> {
    let k = encoder.k();
    if blocks.is_empty() || blocks.len() > k {
        return Err(CodeError::WrongCount { expected: k, got: blocks.len() });
    }
    for (index, b) in blocks.iter().enumerate() {
        if row_len == 0 || b.is_empty() || b.len() % row_len != 0 {
            return Err(CodeError::ShapeMismatch { index, expected: row_len, got: b.len() });
        }
    }
    let n = blocks.iter().map(|b| b.len() / row_len).max().unwrap_or(0);
    let zeros = vec![0.0f32; row_len];
    let mut parity = Vec::with_capacity(n * row_len);
    for i in 0..n {
        let rows: Vec<&[f32]> =
            (0..k).map(|j| blocks.get(j).and_then(|b| b.get(i * row_len..(i + 1) * row_len)).unwrap_or(&zeros)).collect();
        parity.extend(encoder.encode(&rows)?);
    }
    Ok(parity)
}

fn check_same_len<'a>(tensors: impl Iterator<Item = (usize, &'a [f32])>, n: usize) -> Result<(), CodeError> {
    for (index, t) in tensors {
        if t.len() != n {
            return Err(CodeError::ShapeMismatch { index, expected: n, got: t.len() });
        }
    }
    Ok(())
}

/// Encoder names accepted by [`encoder_by_name`].
pub const ENCODERS: [&str; 2] = ["addition", "concatenation"];

/// The encoder called `name` for coding groups of `k` queries. The concatenation encoder
/// infers a square image shape from the query length (784 -> 28x28); use
/// [`encoder_for_shape`] when the shape is known.
///
/// Errors: [`CodeError::UnknownEncoder`] for a name not in [`ENCODERS`], [`CodeError::ZeroK`].
pub fn encoder_by_name(name: &str, k: usize) -> Result<Box<dyn Encoder>, CodeError> {
    match name {
        "addition" => Ok(Box::new(AdditionEncoder::new(k)?)),
        "concatenation" => Ok(Box::new(ConcatenationEncoder::inferred(k)?)),
        _ => Err(CodeError::UnknownEncoder(name.to_string())),
    }
}

/// As [`encoder_by_name`], for queries of a known shape: a model's input shape without the
/// batch dimension (`[C, H, W]`, `[H, W]`, or `[n]`, see [`ImageShape::from_dims`]).
///
/// Errors: those of [`encoder_by_name`]; [`CodeError::BadShape`] if the concatenation encoder
/// gets a shape that is not an image.
pub fn encoder_for_shape(name: &str, k: usize, shape: &[usize]) -> Result<Box<dyn Encoder>, CodeError> {
    match name {
        "concatenation" => {
            let s = ImageShape::from_dims(shape).ok_or_else(|| CodeError::BadShape(format!("{shape:?} is not an image shape")))?;
            Ok(Box::new(ConcatenationEncoder::new(k, s)?))
        }
        _ => encoder_by_name(name, k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_encoded_row_by_row_with_zero_padding() {
        let enc = AdditionEncoder::new(3).unwrap();
        // Member 0: 2 rows of 2; member 1: 1 row; slot 2 empty.
        let p = encode_rows(&enc, &[&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0]], 2).unwrap();
        assert_eq!(p, vec![11.0, 22.0, 3.0, 4.0]);
        let one = encode_rows(&enc, &[&[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0]], 2).unwrap();
        assert_eq!(one, enc.encode(&[&[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0]]).unwrap());
    }

    #[test]
    fn bad_blocks_are_refused() {
        let enc = AdditionEncoder::new(2).unwrap();
        assert!(matches!(encode_rows(&enc, &[], 2), Err(CodeError::WrongCount { .. })));
        let row: &[f32] = &[1.0; 2];
        assert!(matches!(encode_rows(&enc, &[row; 3], 2), Err(CodeError::WrongCount { .. })));
        assert!(matches!(encode_rows(&enc, &[&[1.0; 3]], 2), Err(CodeError::ShapeMismatch { index: 0, .. })));
    }
}
