//! [`ModelSpec`]: a served model's name and tensor shapes, as Open Inference Protocol model
//! metadata describes it. Shared by model instances (which advertise it) and the frontend
//! (which learns it from them).

use anyhow::{bail, ensure};

/// A served model as described by OIP model metadata (`GET /v2/models/{name}` or gRPC
/// `ModelMetadata`). Shapes are per query, without the batch dimension: on the wire they are
/// advertised as `[-1, ...shape]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelSpec {
    /// Model name used in requests (`model_name`).
    pub name: String,
    /// Version string reported in metadata and responses, e.g. "1".
    pub version: String,
    /// OIP platform string, e.g. "parm" or "pytorch_libtorch".
    pub platform: String,
    /// Name of the single input tensor.
    pub input_name: String,
    /// Per-query input shape, no batch dim, e.g. `[784]` or `[3, 32, 32]`.
    pub input_shape: Vec<i64>,
    /// Name of the single output tensor.
    pub output_name: String,
    /// Per-query output shape, no batch dim, e.g. `[10]`.
    pub output_shape: Vec<i64>,
    /// OIP datatype of input and output; parm serves "FP32" only.
    pub datatype: String,
}

impl ModelSpec {
    /// An FP32 model with version "1", platform "parm", tensors named "input" and "output".
    pub fn fp32(name: &str, input_shape: Vec<i64>, output_shape: Vec<i64>) -> Self {
        ModelSpec {
            name: name.to_owned(),
            version: "1".to_owned(),
            platform: "parm".to_owned(),
            input_name: "input".to_owned(),
            input_shape,
            output_name: "output".to_owned(),
            output_shape,
            datatype: "FP32".to_owned(),
        }
    }

    /// Number of f32 values in one query (product of `input_shape`; negative dims count as 0).
    pub fn input_len(&self) -> usize {
        shape_len(&self.input_shape)
    }

    /// Number of f32 values in one prediction (product of `output_shape`).
    pub fn output_len(&self) -> usize {
        shape_len(&self.output_shape)
    }

    /// The gRPC `ModelMetadata` answer for this model (what a worker and the frontend both
    /// send): its one input and one output tensor, each shape with a leading batch dimension of
    /// -1 (`[-1, ...shape]`).
    pub fn grpc_metadata(&self) -> crate::oip::grpc::ModelMetadataResponse {
        use crate::oip::grpc::model_metadata_response::TensorMetadata;
        let tensor = |name: &str, shape: &[i64]| TensorMetadata {
            name: name.to_owned(),
            datatype: self.datatype.clone(),
            shape: std::iter::once(-1).chain(shape.iter().copied()).collect(),
        };
        crate::oip::grpc::ModelMetadataResponse {
            name: self.name.clone(),
            versions: vec![self.version.clone()],
            platform: self.platform.clone(),
            inputs: vec![tensor(&self.input_name, &self.input_shape)],
            outputs: vec![tensor(&self.output_name, &self.output_shape)],
        }
    }

    /// Checks the spec can be served.
    ///
    /// # Errors
    /// Empty name, datatype other than FP32, or a shape that is empty or has a dim < 1.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.name.is_empty(), "model name is empty");
        ensure!(self.datatype == "FP32", "datatype {:?} unsupported (FP32 only)", self.datatype);
        for (what, shape) in [("input", &self.input_shape), ("output", &self.output_shape)] {
            if shape.is_empty() || shape.iter().any(|&d| d < 1) {
                bail!("{what} shape {shape:?} must be non-empty with every dim >= 1");
            }
        }
        Ok(())
    }
}

fn shape_len(shape: &[i64]) -> usize {
    shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).product()
}
