use crate::{CodeError, Encoder, check_same_len};

/// Shape of one image query: `channels x rows x cols`, channel-first, row-major (a query of
/// `channels * rows * cols` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
}

impl ImageShape {
    pub fn new(channels: usize, rows: usize, cols: usize) -> Self {
        Self { channels, rows, cols }
    }

    /// Values per query.
    pub fn len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// True for a shape with no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of a query from a model's input shape without the batch dimension:
    /// `[C, H, W]`, `[H, W]`, or `[n]` with n a perfect square (one channel) or 3 times one
    /// (three channels). `None` if none fits.
    pub fn from_dims(dims: &[usize]) -> Option<Self> {
        match *dims {
            [c, h, w] => Some(Self::new(c, h, w)),
            [h, w] => Some(Self::new(1, h, w)),
            [n] => Self::infer(n),
            _ => None,
        }
    }

    /// Guesses a square image shape for a flat query of `n` values: one channel if n is a
    /// perfect square (784 -> 28x28), else three channels if n/3 is (3072 -> 3x32x32).
    pub fn infer(n: usize) -> Option<Self> {
        let side = |m: usize| {
            let s = (m as f64).sqrt().round() as usize;
            (s > 0 && s * s == m).then_some(s)
        };
        if let Some(s) = side(n) {
            return Some(Self::new(1, s, s));
        }
        if n.is_multiple_of(3)
            && let Some(s) = side(n / 3)
        {
            return Some(Self::new(3, s, s));
        }
        None
    }
}

/// The grid of the concatenation encoder for k queries: `cols = ceil(sqrt(k))`,
/// `rows = ceil(k / cols)`. k = 2: 1 x 2 (side by side, as ParM); k = 3, 4: 2 x 2; k = 5, 6:
/// 2 x 3; k = 7..9: 3 x 3; k = 10..12: 3 x 4. Cells past k stay zero.
pub fn concat_grid(k: usize) -> (usize, usize) {
    let cols = (k as f64).sqrt().ceil() as usize;
    let cols = cols.max(1);
    (k.div_ceil(cols), cols)
}

/// Area-averaging resampling weights from `src` pixels to `dst` pixels along one axis:
/// `w[d * src + s]` is the share of source pixel s in destination pixel d (the overlap of
/// `[s, s+1)` with `[d * src/dst, (d+1) * src/dst)`, divided by `src/dst`). Each row sums to 1.
/// This is exact box-filter ("area", as OpenCV's INTER_AREA / PIL's BOX) resampling; for an
/// integer factor it is plain block averaging.
pub fn area_weights(src: usize, dst: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; dst * src];
    let scale = src as f64 / dst as f64;
    for d in 0..dst {
        let (lo, hi) = (d as f64 * scale, (d + 1) as f64 * scale);
        for s in (lo.floor() as usize)..(hi.ceil() as usize).min(src) {
            let overlap = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
            w[d * src + s] = (overlap / scale) as f32;
        }
    }
    w
}

/// The concatenation encoder: each of the k queries is downsampled by area averaging into one
/// cell of a grid ([`concat_grid`]) and the cells are tiled into one image of the original
/// size, channel by channel.
///
/// Source: ParM (SOSP 2019) §3.2, "image-specific encoder", which tiles k = 2 images side by
/// side (each H x W/2) and k = 4 in quadrants (each H/2 x W/2); this generalises it to any k.
/// Cell boundaries: grid row i spans image rows `[round(i H / gr), round((i+1) H / gr))`,
/// likewise for columns, so cells cover the image exactly when H or W is not divisible (28
/// rows in 3 grid rows: 9, 10, 9). Query j goes to cell `(j / gc, j % gc)` (row-major). The
/// downsampling of ParM's artifact is bilinear (PIL resize); area averaging keeps each cell's
/// mean intensity and loses nothing to aliasing.
#[derive(Debug, Clone)]
pub struct ConcatenationEncoder {
    k: usize,
    shape: Option<ImageShape>,
}

impl ConcatenationEncoder {
    /// An encoder for queries of `shape`. Errors: [`CodeError::ZeroK`]; [`CodeError::BadShape`]
    /// if the image is too small for the grid (a cell would have no pixel).
    pub fn new(k: usize, shape: ImageShape) -> Result<Self, CodeError> {
        if k == 0 {
            return Err(CodeError::ZeroK);
        }
        let (gr, gc) = concat_grid(k);
        if shape.rows < gr || shape.cols < gc || shape.channels == 0 {
            return Err(CodeError::BadShape(format!(
                "{}x{}x{} image too small for a {gr}x{gc} grid",
                shape.channels, shape.rows, shape.cols
            )));
        }
        Ok(Self { k, shape: Some(shape) })
    }

    /// An encoder that infers a square image shape from each group's query length
    /// ([`ImageShape::infer`]); used where only k is known (e.g. [`crate::encoder_by_name`]).
    pub fn inferred(k: usize) -> Result<Self, CodeError> {
        if k == 0 {
            return Err(CodeError::ZeroK);
        }
        Ok(Self { k, shape: None })
    }

    pub fn shape(&self) -> Option<ImageShape> {
        self.shape
    }
}

fn cell_bounds(n: usize, parts: usize) -> Vec<usize> {
    (0..=parts).map(|i| ((i * n) as f64 / parts as f64).round() as usize).collect()
}

/// The cells of the concatenation encoder's grid for k queries on `rows x cols` images:
/// `(row0, rows, col0, cols)` of query j's cell, for j in 0..k (the layout
/// [`ConcatenationEncoder`] writes). Used by parity models that read each cell separately.
pub fn concat_cells(k: usize, rows: usize, cols: usize) -> Vec<(usize, usize, usize, usize)> {
    let (gr, gc) = concat_grid(k);
    let (rb, cb) = (cell_bounds(rows, gr), cell_bounds(cols, gc));
    (0..k)
        .map(|j| {
            let (gi, gj) = (j / gc, j % gc);
            (rb[gi], rb[gi + 1] - rb[gi], cb[gj], cb[gj + 1] - cb[gj])
        })
        .collect()
}

impl Encoder for ConcatenationEncoder {
    fn k(&self) -> usize {
        self.k
    }

    fn name(&self) -> &'static str {
        "concatenation"
    }

    fn encode(&self, queries: &[&[f32]]) -> Result<Vec<f32>, CodeError> {
        if queries.len() != self.k {
            return Err(CodeError::WrongCount { expected: self.k, got: queries.len() });
        }
        let n = queries[0].len();
        check_same_len(queries.iter().copied().enumerate(), n)?;
        let shape = match self.shape {
            Some(s) => s,
            None => ImageShape::infer(n).ok_or_else(|| CodeError::BadShape(format!("cannot infer an image shape for {n} values")))?,
        };
        if shape.len() != n {
            return Err(CodeError::ShapeMismatch { index: 0, expected: shape.len(), got: n });
        }
        let ImageShape { channels, rows, cols } = shape;
        let (gr, gc) = concat_grid(self.k);
        let (rb, cb) = (cell_bounds(rows, gr), cell_bounds(cols, gc));
        let mut out = vec![0.0f32; n];
        let mut tmp = Vec::new();
        for (j, q) in queries.iter().enumerate() {
            let (gi, gj) = (j / gc, j % gc);
            let (r0, th) = (rb[gi], rb[gi + 1] - rb[gi]);
            let (c0, tw) = (cb[gj], cb[gj + 1] - cb[gj]);
            let wr = area_weights(rows, th);
            let wc = area_weights(cols, tw);
            let cranges: Vec<(usize, usize)> = (0..tw)
                .map(|e| {
                    let row = &wc[e * cols..(e + 1) * cols];
                    let lo = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                    let hi = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                    (lo, hi)
                })
                .collect();
            for ch in 0..channels {
                let img = &q[ch * rows * cols..(ch + 1) * rows * cols];
                // rows first: tmp[th x cols] = wr * img
                tmp.clear();
                tmp.resize(th * cols, 0.0);
                for d in 0..th {
                    for s in 0..rows {
                        let w = wr[d * rows + s];
                        if w != 0.0 {
                            for c in 0..cols {
                                tmp[d * cols + c] += w * img[s * cols + c];
                            }
                        }
                    }
                }
                // then columns, into the cell
                let plane = &mut out[ch * rows * cols..(ch + 1) * rows * cols];
                for d in 0..th {
                    for (e, &(lo, hi)) in cranges.iter().enumerate() {
                        let mut v = 0.0;
                        for s in lo..hi {
                            v += wc[e * cols + s] * tmp[d * cols + s];
                        }
                        plane[(r0 + d) * cols + c0 + e] = v;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grids() {
        let g: Vec<_> = [1, 2, 3, 4, 5, 8, 9, 10, 12].iter().map(|&k| concat_grid(k)).collect();
        assert_eq!(g, vec![(1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 3), (3, 3), (3, 4), (3, 4)]);
    }

    #[test]
    fn k2_is_side_by_side_halves_with_pair_averages() {
        // 2x4 images: row-major [a b c d; e f g h]; k = 2 -> cells 2x2, columns averaged in pairs.
        let x1: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let x2 = vec![1.0f32; 8];
        let enc = ConcatenationEncoder::new(2, ImageShape::new(1, 2, 4)).unwrap();
        let p = enc.encode(&[&x1, &x2]).unwrap();
        assert_eq!(p, vec![0.5, 2.5, 1.0, 1.0, 4.5, 6.5, 1.0, 1.0]);
    }

    #[test]
    fn k4_quadrants_and_inferred_shape() {
        let qs: Vec<Vec<f32>> = (0..4).map(|j| vec![j as f32; 16]).collect();
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let p = ConcatenationEncoder::inferred(4).unwrap().encode(&refs).unwrap();
        let expect = [0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.];
        assert_eq!(p, expect.to_vec());
    }

    #[test]
    fn empty_cells_are_zero_and_errors() {
        let qs: Vec<Vec<f32>> = (0..3).map(|_| vec![1.0; 784]).collect();
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let p = ConcatenationEncoder::new(3, ImageShape::new(1, 28, 28)).unwrap().encode(&refs).unwrap();
        // bottom-right quadrant (cell 3) empty
        assert_eq!(p[27 * 28 + 27], 0.0);
        assert!((p[0] - 1.0).abs() < 1e-6);
        assert!(ConcatenationEncoder::new(2, ImageShape::new(1, 28, 28)).unwrap().encode(&refs).is_err());
        assert!(ConcatenationEncoder::inferred(2).unwrap().encode(&[&[1.0, 2.0], &[1.0, 2.0]]).is_err());
        assert!(ConcatenationEncoder::new(12, ImageShape::new(1, 2, 2)).is_err());
    }

    proptest! {
        /// Area averaging preserves each query's mean intensity (per channel), for any k and
        /// image size, up to the cell's share of the image.
        #[test]
        fn area_weights_rows_sum_to_one(src in 1usize..40, dst in 1usize..40) {
            prop_assume!(dst <= src);
            let w = area_weights(src, dst);
            for d in 0..dst {
                let s: f32 = w[d * src..(d + 1) * src].iter().sum();
                prop_assert!((s - 1.0).abs() < 1e-5);
            }
        }

        #[test]
        fn constant_queries_fill_their_cells(k in 1usize..13, side in 12usize..33, ch in 1usize..4) {
            let shape = ImageShape::new(ch, side, side);
            let qs: Vec<Vec<f32>> = (0..k).map(|j| vec![(j + 1) as f32; shape.len()]).collect();
            let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
            let p = ConcatenationEncoder::new(k, shape).unwrap().encode(&refs).unwrap();
            let (gr, gc) = concat_grid(k);
            let (rb, cb) = (cell_bounds(side, gr), cell_bounds(side, gc));
            for c in 0..ch {
                for r in 0..side {
                    for col in 0..side {
                        let gi = (0..gr).find(|&i| r < rb[i + 1]).unwrap();
                        let gj = (0..gc).find(|&j| col < cb[j + 1]).unwrap();
                        let cell = gi * gc + gj;
                        let want = if cell < k { (cell + 1) as f32 } else { 0.0 };
                        prop_assert!((p[c * side * side + r * side + col] - want).abs() < 1e-4);
                    }
                }
            }
        }
    }
}
