//! parm models as ONNX files, for any ONNX runtime (onnxruntime, Triton, tract).
//!
//! The graph has one input `input` `[N, d]` float32 (N: symbolic batch, `dim_param "N"`,
//! d = values per query) and one output `output` `[N, outputs]` float32: the same values
//! [`crate::Classifier::classify`] returns. Operator set 13, IR version 8.
//! - [`Net::Mlp`]: `Gemm` per linear layer (weights stored `[in, out]`, as burn holds them, so
//!   `transB = 0`), `Relu` between layers.
//! - [`Net::CellMlp`]: `Pad` one zero column, `Gather` the k padded cells
//!   (`[N, k * cell]`), `Reshape` to `[N * k, cell]`, the shared MLP, `Reshape` to
//!   `[N, k * classes]`.
//! - LeNet and ResNet-18 are not exported yet ([`NnError::Invalid`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::tensor::Tensor;
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, type_proto,
};

use crate::{Mlp, Net, NnError, io_err};

/// ONNX operator set the exported graphs use.
pub const OPSET: i64 = 13;
/// Name of the exported graph's input.
pub const INPUT: &str = "input";
/// Name of the exported graph's output.
pub const OUTPUT: &str = "output";

/// The ONNX graph of `net`; `props` become the model's `metadata_props` (e.g. `("parm.arch",
/// "mlp-784-200-100-10")`).
///
/// # Errors
/// [`NnError::Invalid`] for an architecture that is not exported yet (LeNet, ResNet-18).
pub fn onnx_model(net: &Net, props: &[(String, String)]) -> Result<ModelProto, NnError> {
    let mut g = Graph::default();
    let (input_len, outputs) = match net {
        Net::Mlp(m) => (mlp_input_len(m), g.mlp(m, INPUT, OUTPUT)),
        Net::CellMlp(m) => (m.input_len(), g.cell_mlp(m)),
        Net::LeNet(_) | Net::ResNet18(_) => {
            return Err(NnError::Invalid(
                "ONNX export supports MLP and cell-wise MLP models; LeNet and ResNet-18 are not supported yet".into(),
            ));
        }
    };
    let graph = GraphProto {
        name: "parm".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![float_value(INPUT, input_len)],
        output: vec![float_value(OUTPUT, outputs)],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "parm".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        metadata_props: props.iter().map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() }).collect(),
        graph: Some(graph),
        ..Default::default()
    })
}

/// Writes [`onnx_model`] to `path` (through a temporary file renamed into place).
///
/// # Errors
/// [`NnError::Invalid`] if `path` exists and `overwrite` is false, or for an architecture
/// not exported yet; I/O errors.
pub fn write_onnx(net: &Net, props: &[(String, String)], path: &Path, overwrite: bool) -> Result<(), NnError> {
    if path.exists() && !overwrite {
        return Err(NnError::Invalid(format!("{} exists; pass --force to overwrite it", path.display())));
    }
    let bytes = onnx_model(net, props)?.encode_to_vec();
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Values per query the MLP reads (its first layer's input width).
fn mlp_input_len(m: &Mlp) -> usize {
    m.layers()[0].weight.dims()[0]
}

/// The width of the MLP's output.
fn mlp_outputs(m: &Mlp) -> usize {
    m.layers().last().map_or(0, |l| l.weight.dims()[1])
}

/// Nodes and initializers being assembled.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// Gemm (+ Relu) per layer from `input` to `output`; returns the output width.
    fn mlp(&mut self, m: &Mlp, input: &str, output: &str) -> usize {
        let last = m.layers().len() - 1;
        let mut x = input.to_string();
        for (i, layer) in m.layers().iter().enumerate() {
            let y = if i == last { output.to_string() } else { format!("layers.{i}.out") };
            self.linear(layer, &format!("layers.{i}"), &x, &y);
            x = y;
            if i < last {
                let r = format!("layers.{i}.relu");
                self.node("Relu", &[&x], &r, vec![]);
                x = r;
            }
        }
        mlp_outputs(m)
    }

    /// `output = input @ W + b` as one Gemm.
    fn linear(&mut self, layer: &Linear, name: &str, input: &str, output: &str) {
        let w = layer.weight.val();
        let [i, o] = w.dims();
        self.float_init(&format!("{name}.weight"), &[i, o], values(w));
        let mut inputs = vec![input.to_string(), format!("{name}.weight")];
        if let Some(b) = &layer.bias {
            self.float_init(&format!("{name}.bias"), &[o], values(b.val()));
            inputs.push(format!("{name}.bias"));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node("Gemm", &inputs, output, vec![]);
    }

    /// Pad, Gather the cells, Reshape to one row per cell, the MLP, Reshape back.
    fn cell_mlp(&mut self, m: &crate::cells::CellMlp) -> usize {
        let idx = m.gather_index();
        let k = m.k();
        let cell = idx.len() / k;
        let classes = mlp_outputs(m.mlp());
        self.int_init("cells.pads", &[0, 0, 0, 1]);
        self.int_init("cells.index", &idx);
        self.int_init("cells.shape", &[-1, cell as i64]);
        self.int_init("outputs.shape", &[-1, (k * classes) as i64]);
        self.node("Pad", &[INPUT, "cells.pads"], "padded", vec![]);
        self.node("Gather", &["padded", "cells.index"], "cells", vec![int_attr("axis", 1)]);
        self.node("Reshape", &["cells", "cells.shape"], "cell_rows", vec![]);
        self.mlp(m.mlp(), "cell_rows", "cell_outputs");
        self.node("Reshape", &["cell_outputs", "outputs.shape"], OUTPUT, vec![]);
        k * classes
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: format!("{output}.{}", op.to_lowercase()),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
    }

    fn float_init(&mut self, name: &str, dims: &[usize], v: Vec<f32>) {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    fn int_init(&mut self, name: &str, v: &[i64]) {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: v.to_vec(),
            ..Default::default()
        });
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("float tensor holds f32 values")
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

/// A float32 `[N, width]` graph input or output.
fn float_value(name: &str, width: usize) -> ValueInfoProto {
    let dim = |v| Dimension { value: Some(v), ..Default::default() };
    let shape = TensorShapeProto { dim: vec![dim(dimension::Value::DimParam("N".into())), dim(dimension::Value::DimValue(width as i64))] };
    let tensor = type_proto::Tensor { elem_type: DataType::Float as i32, shape: Some(shape) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::cells::CellMlp;
    use crate::mlp::Init;
    use crate::onnx::BatchAxis;
    use crate::{Classifier, MlpConfig, OnnxModel, tensor2, to_vec};

    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d).map(|i| ((i * 7919) % 257) as f32 / 257.0 - 0.3).collect()
    }

    /// Exports `net`, loads the file with tract, and compares both on 5 rows (to 1e-5,
    /// relative to 1 + |value|); onnxruntime too when the fixtures' venv is there.
    fn round_trip(net: Net, d: usize, outputs: usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        write_onnx(&net, &[("parm.arch".into(), "test".into())], &path, false).unwrap();
        let m = OnnxModel::load(&path, None).unwrap();
        assert_eq!((m.input_name(), m.input_shape(), m.output_name(), m.output_shape()), (INPUT, &[d][..], OUTPUT, &[outputs][..]));
        assert_eq!(m.batch_axis(), BatchAxis::Dynamic);
        let x = rows(5, d);
        let want = to_vec(net.classify(tensor2(x.clone(), 5, d, &Device::flex())));
        let close =
            |got: &[f32], tol: f32| got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= tol * (1.0 + w.abs()));
        assert!(close(&m.infer(&x, 5).unwrap(), 1e-5));
        if let Some(fx) = crate::testing::onnx_fixtures() {
            assert!(close(&fx.onnxruntime(&path, &x, &[5, d], OUTPUT), 1e-5), "onnxruntime differs");
        }
    }

    #[test]
    fn an_exported_mlp_computes_what_burn_computes() {
        let mlp = MlpConfig { input: 784, hidden: vec![200, 100], classes: 10 }.init(Init::Default, &Device::flex());
        round_trip(Net::Mlp(mlp), 784, 10);
    }

    #[test]
    fn an_exported_cell_mlp_computes_what_burn_computes() {
        // k = 3 on 28 x 28: cells of unequal size, so padding is exercised.
        let m = CellMlp::new(3, 1, 28, 28, &[32], 10, Init::Default, &Device::flex());
        round_trip(Net::CellMlp(m), 784, 30);
    }

    #[test]
    fn an_existing_file_is_kept_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"keep me").unwrap();
        let net = Net::Mlp(MlpConfig { input: 4, hidden: vec![3], classes: 2 }.init(Init::Default, &Device::flex()));
        let e = write_onnx(&net, &[], &path, false).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        write_onnx(&net, &[], &path, true).unwrap();
        assert_eq!(OnnxModel::load(&path, None).unwrap().output_len(), 2);
    }

    #[test]
    fn lenet_is_not_exported_yet() {
        let net = Net::LeNet(crate::cnn::LeNet::new(1, 28, 10, &Device::flex()));
        let e = onnx_model(&net, &[]).unwrap_err().to_string();
        assert!(e.contains("not supported yet"), "{e}");
    }
}
