//! Open Inference Protocol tensor datatypes and their conversion to the model's FP32.
//!
//! Source: PROTOCOL.md (KServe v2 / Triton): datatypes BOOL, UINT8..UINT64, INT8..INT64, FP16,
//! BF16, FP32, FP64, BYTES; binary tensors are little-endian, row-major, without padding. parm's
//! models take FP32, so every numeric datatype is converted to f32 on the way in (integers
//! beyond 2^24 and FP64 values lose precision, as a cast in the client would). BOOL and BYTES
//! have no sensible meaning as pixel values and are rejected.

/// A tensor datatype of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    /// Parses a protocol name such as `"FP32"`.
    ///
    /// Errors: an unknown name, with the list of known ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "FP16" => Self::F16,
            "BF16" => Self::Bf16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            "BYTES" => Self::Bytes,
            other => {
                return Err(format!(
                    "unknown datatype '{other}' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)"
                ));
            }
        })
    }

    /// Bytes per element in the binary format; `None` for BYTES (length-prefixed).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
        })
    }

    fn is_integer(self) -> bool {
        matches!(self, Self::U8 | Self::U16 | Self::U32 | Self::U64 | Self::I8 | Self::I16 | Self::I32 | Self::I64)
    }

    /// Checks the datatype can feed an FP32 model.
    ///
    /// Errors: BOOL and BYTES.
    pub fn check_numeric(self, input: &str) -> Result<(), String> {
        match self {
            Self::Bool | Self::Bytes => Err(format!(
                "input '{input}': datatype {} is not supported by this model, which takes FP32 (send FP32 or another numeric datatype)",
                if self == Self::Bool { "BOOL" } else { "BYTES" }
            )),
            _ => Ok(()),
        }
    }
}

/// Decodes `count` little-endian elements of `dtype` from `bytes` into f32.
///
/// Errors: BOOL/BYTES, or a byte length other than `count * size`.
pub fn decode_binary(dtype: DataType, bytes: &[u8], count: usize, input: &str) -> Result<Vec<f32>, String> {
    dtype.check_numeric(input)?;
    let size = dtype.size().expect("numeric datatypes have a size");
    if Some(bytes.len()) != count.checked_mul(size) {
        return Err(format!("input '{input}': {} bytes of binary data, the shape needs {count} elements x {size} bytes", bytes.len()));
    }
    // One loop per datatype: a `match` per element kept the loop from vectorizing, and
    // decoding FP32 took 5.8% of the frontend's CPU at 18,000 requests/s (perf, BENCHMARKS
    // "Throughput at a latency objective").
    Ok(match dtype {
        DataType::U8 => each(bytes, |[b]| b as f32),
        DataType::I8 => each(bytes, |[b]| b as i8 as f32),
        DataType::U16 => each(bytes, |b| u16::from_le_bytes(b) as f32),
        DataType::I16 => each(bytes, |b| i16::from_le_bytes(b) as f32),
        DataType::F16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        DataType::Bf16 => each(bytes, |b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16)),
        DataType::U32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
        DataType::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        DataType::F32 => each(bytes, f32::from_le_bytes),
        DataType::U64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
        DataType::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        DataType::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        DataType::Bool | DataType::Bytes => unreachable!("rejected by check_numeric"),
    })
}

/// `bytes` as elements of N bytes, each converted by `f` (a whole multiple of N, checked by
/// the caller).
fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N bytes"))).collect()
}

/// IEEE 754 half precision to f32 (exact: every f16 is representable).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: value = m * 2^-24
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Converts one JSON number of `dtype` to f32.
///
/// Errors: a fraction for an integer datatype, or a value out of the datatype's range.
pub fn json_number_to_f32(dtype: DataType, n: &serde_json::Number, input: &str) -> Result<f32, String> {
    if dtype.is_integer() {
        let v = n.as_i64().map(|v| v as i128).or_else(|| n.as_u64().map(|v| v as i128));
        let Some(v) = v else {
            return Err(format!("input '{input}': {n} is not an integer, but the datatype is integral"));
        };
        let (lo, hi): (i128, i128) = match dtype {
            DataType::U8 => (0, u8::MAX as i128),
            DataType::U16 => (0, u16::MAX as i128),
            DataType::U32 => (0, u32::MAX as i128),
            DataType::U64 => (0, u64::MAX as i128),
            DataType::I8 => (i8::MIN as i128, i8::MAX as i128),
            DataType::I16 => (i16::MIN as i128, i16::MAX as i128),
            DataType::I32 => (i32::MIN as i128, i32::MAX as i128),
            _ => (i64::MIN as i128, i64::MAX as i128),
        };
        if v < lo || v > hi {
            return Err(format!("input '{input}': {v} is out of range for its datatype"));
        }
        return Ok(v as f32);
    }
    n.as_f64().map(|v| v as f32).ok_or_else(|| format!("input '{input}': number {n} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_datatype_decodes_to_f32() {
        let cases: [(DataType, Vec<u8>, f32); 12] = [
            (DataType::U8, vec![200], 200.0),
            (DataType::I8, vec![0xfe], -2.0),
            (DataType::U16, 500u16.to_le_bytes().to_vec(), 500.0),
            (DataType::I16, (-300i16).to_le_bytes().to_vec(), -300.0),
            (DataType::U32, 70000u32.to_le_bytes().to_vec(), 70000.0),
            (DataType::I32, (-5i32).to_le_bytes().to_vec(), -5.0),
            (DataType::U64, 9u64.to_le_bytes().to_vec(), 9.0),
            (DataType::I64, (-9i64).to_le_bytes().to_vec(), -9.0),
            (DataType::F16, 0x3e00u16.to_le_bytes().to_vec(), 1.5),
            (DataType::Bf16, 0xbfc0u16.to_le_bytes().to_vec(), -1.5),
            (DataType::F32, 0.25f32.to_le_bytes().to_vec(), 0.25),
            (DataType::F64, 0.125f64.to_le_bytes().to_vec(), 0.125),
        ];
        for (dt, bytes, want) in cases {
            assert_eq!(decode_binary(dt, &bytes, 1, "x").unwrap(), vec![want], "{dt:?}");
        }
        let three: Vec<u8> = [1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_binary(DataType::F32, &three, 3, "x").unwrap(), vec![1.5, -2.0, 3.25]);
        assert_eq!(decode_binary(DataType::I16, &[1, 0, 0xff, 0xff], 2, "x").unwrap(), vec![1.0, -1.0]);
        assert!(decode_binary(DataType::F32, &[0; 7], 2, "x").is_err());
        assert!(decode_binary(DataType::Bool, &[1], 1, "x").is_err());
        assert!(decode_binary(DataType::Bytes, &[0; 5], 1, "x").is_err());
    }

    #[test]
    fn f16_specials() {
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn json_numbers_respect_integer_ranges() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(json_number_to_f32(DataType::U8, &n("255"), "x"), Ok(255.0));
        assert!(json_number_to_f32(DataType::U8, &n("256"), "x").is_err());
        assert!(json_number_to_f32(DataType::I32, &n("1.5"), "x").is_err());
        assert_eq!(json_number_to_f32(DataType::F64, &n("1.5"), "x"), Ok(1.5));
    }
}
