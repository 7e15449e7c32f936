//! The per-query transform: resize (images), scale, per-channel normalisation, layout.
//!
//! [`Preprocess::apply`] is the single implementation used for training, evaluation and
//! serving, so a model sees identically transformed inputs everywhere.

use serde::{Deserialize, Serialize};

use crate::DataError;

/// Memory layout of one image query as the model expects it (and as the data is held after
/// preprocessing). Vectors (`[d]`) are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Channel-first: `[C, H, W]` per query (PyTorch, burn). The default.
    #[default]
    Nchw,
    /// Channel-last: `[H, W, C]` per query (TensorFlow / Keras).
    Nhwc,
}

/// What the raw input values are; it decides the default [`Preprocess::scale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Byte values `0..=255`: uint8 arrays, IDX files, decoded PNG / JPEG images.
    Bytes,
    /// Floating-point values taken as they are: float32 / float64 arrays.
    Float,
}

impl InputKind {
    /// The scale used when [`Preprocess::scale`] is unset: `1/255` for bytes, `1` for floats.
    pub fn default_scale(self) -> f32 {
        match self {
            InputKind::Bytes => 1.0 / 255.0,
            InputKind::Float => 1.0,
        }
    }
}

/// How raw inputs become model inputs. Every field has a default (`{}` is a valid config),
/// so it parses from JSON or TOML text with serde; unknown fields are refused.
///
/// Steps, in order, on one query whose raw shape is `[d]` (a vector), `[H, W]` (one channel)
/// or `[C, H, W]` (channel-first):
/// 1. `resize` (images only): bilinear, half-pixel centres, edge-clamped, no antialiasing
///    (as PyTorch `interpolate(mode="bilinear", align_corners=False)`);
/// 2. multiply by `scale` (a scale of exactly `1/255` divides by 255 instead, so byte inputs
///    match the built-in data sets bit for bit);
/// 3. `(x - mean[c]) / std[c]` per channel `c` (per feature for vectors);
/// 4. images only: reorder to `layout`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    /// Target `[H, W]` in pixels; images only. `None`: keep the size.
    pub resize: Option<[usize; 2]>,
    /// Factor applied to raw values. `None`: resolved by input kind ([`InputKind::default_scale`],
    /// see [`Preprocess::resolved`]); [`Preprocess::apply`] on an unresolved config uses `1`.
    pub scale: Option<f32>,
    /// Subtracted after scaling: one value per channel (per feature for vectors), or one value
    /// for all; empty = 0.
    pub mean: Vec<f32>,
    /// Divisor after subtracting `mean`: per channel or one value, each finite and non-zero;
    /// empty = 1.
    pub std: Vec<f32>,
    /// Layout the model expects; images are held in it after preprocessing.
    pub layout: Layout,
}

/// A query's raw shape, canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Vector(usize),
    Image { c: usize, h: usize, w: usize },
}

impl Preprocess {
    /// This config with `scale` filled in for `kind` when unset. Store the resolved config
    /// with a model so that serving applies the same transform.
    pub fn resolved(&self, kind: InputKind) -> Preprocess {
        Preprocess { scale: Some(self.scale.unwrap_or(kind.default_scale())), ..self.clone() }
    }

    /// Transforms one query: `raw` holds `product(shape)` values, row-major, `shape` is `[d]`,
    /// `[H, W]` or `[C, H, W]` (steps on [`Preprocess`]).
    ///
    /// Returns the values and their shape: `[d]` for vectors; `[C, H', W']` (nchw) or
    /// `[H', W', C]` (nhwc) for images, `C = 1` for `[H, W]` input.
    ///
    /// Errors: [`DataError::Preprocess`] (origin `<query>`) for a shape of another rank, a zero
    /// dimension, `raw.len() != product(shape)`, `resize` on a vector or with a zero size,
    /// `mean` / `std` of a length other than 0, 1 or the channel count, a zero or non-finite
    /// `std`.
    pub fn apply(&self, raw: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>), DataError> {
        self.apply_at(raw, shape).map_err(|msg| DataError::Preprocess { origin: "<query>".into(), msg })
    }

    /// [`Preprocess::apply`] on a batch: `shape` is `[N, ...]` with `...` a query shape; returns
    /// the `N` transformed queries back to back and `[N, ...output shape]` (`[0]` if `N = 0`).
    ///
    /// Errors: those of [`Preprocess::apply`] (origin `<query i>`), and for an empty `shape`.
    pub fn apply_batch(&self, raw: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>), DataError> {
        let err = |origin: String, msg| DataError::Preprocess { origin, msg };
        let Some((&n, item)) = shape.split_first() else { return Err(err("<batch>".into(), "empty batch shape".into())) };
        let d: usize = item.iter().product();
        if raw.len() != n * d {
            return Err(err("<batch>".into(), format!("{} values for shape {shape:?}", raw.len())));
        }
        let (mut out, mut out_shape) = (Vec::new(), vec![0]);
        for i in 0..n {
            let (v, s) = self.apply_at(&raw[i * d..(i + 1) * d], item).map_err(|msg| err(format!("<query {i}>"), msg))?;
            out.extend(v);
            out_shape = [&[n][..], &s].concat();
        }
        Ok((out, out_shape))
    }

    /// [`Preprocess::apply`] with a bare message as error, for callers that name the origin.
    pub(crate) fn apply_at(&self, raw: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>), String> {
        let item = canonical(raw, shape)?;
        let (mut x, item) = self.resize(raw, item)?;
        match self.scale.unwrap_or(1.0) {
            s if s == 1.0 / 255.0 => x.iter_mut().for_each(|v| *v /= 255.0),
            s => x.iter_mut().for_each(|v| *v *= s),
        }
        self.normalize(&mut x, item)?;
        Ok(self.reorder(x, item))
    }

    fn resize(&self, raw: &[f32], item: Item) -> Result<(Vec<f32>, Item), String> {
        let (Some([nh, nw]), Item::Image { c, h, w }) = (self.resize, item) else {
            return match (self.resize, item) {
                (Some(_), Item::Vector(d)) => Err(format!("resize applies to images ([C, H, W] or [H, W]), not to vectors of shape [{d}]")),
                _ => Ok((raw.to_vec(), item)),
            };
        };
        if nh == 0 || nw == 0 {
            return Err(format!("resize to [{nh}, {nw}]: sizes must be positive"));
        }
        let (ys, xs) = (taps(h, nh), taps(w, nw));
        let mut out = Vec::with_capacity(c * nh * nw);
        for plane in raw.chunks_exact(h * w) {
            for &(y0, y1, fy) in &ys {
                for &(x0, x1, fx) in &xs {
                    let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                    let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                    out.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
        Ok((out, Item::Image { c, h: nh, w: nw }))
    }

    fn normalize(&self, x: &mut [f32], item: Item) -> Result<(), String> {
        if self.mean.is_empty() && self.std.is_empty() {
            return Ok(());
        }
        let (channels, plane) = match item {
            Item::Vector(d) => (d, 1),
            Item::Image { c, h, w } => (c, h * w),
        };
        let mean = per_channel(&self.mean, channels, 0.0, "mean")?;
        let std = per_channel(&self.std, channels, 1.0, "std")?;
        if let Some(s) = std.iter().find(|s| !s.is_finite() || **s == 0.0) {
            return Err(format!("std {s} must be finite and non-zero"));
        }
        for (ch, values) in x.chunks_exact_mut(plane).enumerate() {
            values.iter_mut().for_each(|v| *v = (*v - mean[ch]) / std[ch]);
        }
        Ok(())
    }

    fn reorder(&self, x: Vec<f32>, item: Item) -> (Vec<f32>, Vec<usize>) {
        match (item, self.layout) {
            (Item::Vector(d), _) => (x, vec![d]),
            (Item::Image { c, h, w }, Layout::Nchw) => (x, vec![c, h, w]),
            (Item::Image { c, h, w }, Layout::Nhwc) => {
                let out = (0..h * w).flat_map(|p| (0..c).map(move |ch| ch * h * w + p)).map(|i| x[i]).collect();
                (out, vec![h, w, c])
            }
        }
    }
}

fn canonical(raw: &[f32], shape: &[usize]) -> Result<Item, String> {
    let item = match *shape {
        [d] => Item::Vector(d),
        [h, w] => Item::Image { c: 1, h, w },
        [c, h, w] => Item::Image { c, h, w },
        _ => return Err(format!("query shape {shape:?}: expected [d], [H, W] or [C, H, W]")),
    };
    if shape.contains(&0) {
        return Err(format!("query shape {shape:?} has a zero dimension"));
    }
    if raw.len() != shape.iter().product::<usize>() {
        return Err(format!("{} values do not fill query shape {shape:?}", raw.len()));
    }
    Ok(item)
}

/// `values` expanded to one per channel: empty -> `default`, one value -> repeated.
fn per_channel(values: &[f32], channels: usize, default: f32, what: &str) -> Result<Vec<f32>, String> {
    match values.len() {
        0 => Ok(vec![default; channels]),
        1 => Ok(vec![values[0]; channels]),
        n if n == channels => Ok(values.to_vec()),
        n => Err(format!("{what} has {n} values; expected 1 or one per channel ({channels})")),
    }
}

/// For each of `m` output positions along an axis of `n` inputs: the two source indices and
/// the weight of the second (half-pixel centres, clamped at the edges).
fn taps(n: usize, m: usize) -> Vec<(usize, usize, f32)> {
    (0..m)
        .map(|i| {
            let s = ((i as f64 + 0.5) * n as f64 / m as f64 - 0.5).clamp(0.0, (n - 1) as f64);
            let i0 = s.floor() as usize;
            (i0, (i0 + 1).min(n - 1), (s - i0 as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(json: &str) -> Preprocess {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_leave_values_and_shape_alone() {
        let (x, s) = Preprocess::default().apply(&[1.0, 2.0, 3.0], &[3]).unwrap();
        assert_eq!((x, s), (vec![1.0, 2.0, 3.0], vec![3]));
        // [H, W] becomes one channel.
        let (x, s) = Preprocess::default().apply(&[5.0, 6.0], &[1, 2]).unwrap();
        assert_eq!((x, s), (vec![5.0, 6.0], vec![1, 1, 2]));
    }

    #[test]
    fn scale_resolves_by_input_kind() {
        let p = Preprocess::default();
        assert_eq!(p.resolved(InputKind::Bytes).scale, Some(1.0 / 255.0));
        assert_eq!(p.resolved(InputKind::Float).scale, Some(1.0));
        assert_eq!(pre(r#"{"scale": 0.5}"#).resolved(InputKind::Bytes).scale, Some(0.5));
        let (x, _) = p.resolved(InputKind::Bytes).apply(&[0.0, 51.0, 255.0], &[3]).unwrap();
        assert_eq!(x, vec![0.0, 0.2, 1.0]);
    }

    #[test]
    fn upsizes_bilinearly_with_half_pixel_centres() {
        let p = pre(r#"{"resize": [4, 4]}"#);
        let (x, s) = p.apply(&[0.0, 4.0, 8.0, 12.0], &[1, 2, 2]).unwrap();
        assert_eq!(s, vec![1, 4, 4]);
        #[rustfmt::skip]
        let want = [0.0, 1.0, 3.0, 4.0,  2.0, 3.0, 5.0, 6.0,  6.0, 7.0, 9.0, 10.0,  8.0, 9.0, 11.0, 12.0];
        assert_eq!(x, want);
    }

    #[test]
    fn downsizes_each_channel_to_block_means() {
        // Two channels of 2x4 -> 1x2: each output is the mean of a 2x2 block.
        let raw: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let (x, s) = pre(r#"{"resize": [1, 2]}"#).apply(&raw, &[2, 2, 4]).unwrap();
        assert_eq!(s, vec![2, 1, 2]);
        assert_eq!(x, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn normalises_per_channel_and_with_one_value() {
        let p = pre(r#"{"scale": 2.0, "mean": [1.0, 10.0], "std": [0.5, 2.0]}"#);
        let (x, _) = p.apply(&[1.0, 2.0, 6.0, 7.0], &[2, 1, 2]).unwrap();
        assert_eq!(x, vec![2.0, 6.0, 1.0, 2.0]);
        let (x, _) = pre(r#"{"mean": [1.0], "std": [4.0]}"#).apply(&[1.0, 5.0, 9.0], &[3]).unwrap();
        assert_eq!(x, vec![0.0, 1.0, 2.0]);
        // Per feature for vectors.
        let (x, _) = pre(r#"{"mean": [1.0, 2.0, 3.0]}"#).apply(&[1.0, 5.0, 9.0], &[3]).unwrap();
        assert_eq!(x, vec![0.0, 3.0, 6.0]);
    }

    #[test]
    fn nhwc_interleaves_channels() {
        let (x, s) = pre(r#"{"layout": "nhwc"}"#).apply(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 1, 2]).unwrap();
        assert_eq!((x, s), (vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0], vec![1, 2, 3]));
        // Vectors have no layout.
        let (x, s) = pre(r#"{"layout": "nhwc"}"#).apply(&[1.0, 2.0], &[2]).unwrap();
        assert_eq!((x, s), (vec![1.0, 2.0], vec![2]));
    }

    #[test]
    fn batch_applies_the_same_transform_to_each_query() {
        let p = pre(r#"{"scale": 10.0, "layout": "nhwc"}"#);
        let raw = [1.0, 2.0, 3.0, 4.0];
        let (x, s) = p.apply_batch(&raw, &[2, 2, 1, 1]).unwrap();
        assert_eq!((x, s), (vec![10.0, 20.0, 30.0, 40.0], vec![2, 1, 1, 2]));
        assert_eq!(p.apply_batch(&[], &[0, 3]).unwrap(), (vec![], vec![0]));
        assert!(p.apply_batch(&raw, &[3, 2]).is_err());
    }

    #[test]
    fn refuses_bad_shapes_and_settings() {
        let msg = |p: &Preprocess, raw: &[f32], shape: &[usize]| p.apply(raw, shape).unwrap_err().to_string();
        let d = Preprocess::default();
        assert!(msg(&d, &[1.0; 3], &[2]).contains("3 values do not fill query shape [2]"));
        assert!(msg(&d, &[1.0; 1], &[1, 1, 1, 1]).contains("expected [d], [H, W] or [C, H, W]"));
        assert!(msg(&d, &[], &[0]).contains("zero dimension"));
        assert!(msg(&pre(r#"{"resize": [2, 2]}"#), &[1.0; 4], &[4]).contains("resize applies to images"));
        assert!(msg(&pre(r#"{"resize": [0, 2]}"#), &[1.0; 4], &[2, 2]).contains("must be positive"));
        assert!(
            msg(&pre(r#"{"mean": [1.0, 2.0]}"#), &[1.0; 12], &[3, 2, 2]).contains("mean has 2 values; expected 1 or one per channel (3)")
        );
        assert!(msg(&pre(r#"{"std": [0.0]}"#), &[1.0; 4], &[4]).contains("std 0 must be finite and non-zero"));
        assert!(serde_json::from_str::<Preprocess>(r#"{"layout": "chw"}"#).is_err());
        assert!(serde_json::from_str::<Preprocess>(r#"{"sacle": 1.0}"#).is_err());
    }
}
