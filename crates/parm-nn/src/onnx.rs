//! ONNX models run in process by tract (pure Rust): a deployed model F from any framework
//! that exports ONNX (PyTorch, scikit-learn through skl2onnx, Keras through tf2onnx, parm's own
//! `parm export`).
//!
//! parm serves graphs with one float32 input `[batch, d1, .., dn]` and reads one float32
//! output `[batch, e1, .., em]`; a query is one row, `d1 * .. * dn` values, and its answer is
//! `e1 * .. * em` values (row-major). The batch axis is the first axis:
//! - symbolic (`dim_param` such as `"N"`, or left unnamed): the graph is optimised once for a
//!   symbolic batch, and any number of rows runs in one call ([`BatchAxis::Dynamic`]);
//! - fixed to `b`: rows run `b` at a time, the last group padded with zero rows whose outputs
//!   are dropped ([`BatchAxis::Fixed`]). A graph fixed to 1 is served one query at a time.
//!   A symbolic axis that tract cannot keep symbolic through optimisation falls back to
//!   `Fixed(1)` as well.
//!
//! Everything is checked at load time: the input count and type, the output's type and
//! shape, and every operator (tract's shape analysis runs on the whole graph), so that a model
//! with an operator tract lacks fails to load, naming the node, and never fails while serving.
//! Attention operators (`MultiHeadAttention`, `GroupQueryAttention`, `Attention`) are left
//! out of this build (tract-onnx's `transformers` feature).
//!
//! [`OnnxRuntime::Ort`] runs the checked graph with ONNX Runtime instead ([`crate::onnx_ort`]),
//! for models where tract is slow (convolutions).

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::{self, GraphProto, ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{TractErrorContext, ensure};

use crate::onnx_ort::OrtSession;
use crate::{DeployedModel, NnError};

/// ONNX's float32 element type.
const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;

/// How the graph's first (batch) axis is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAxis {
    /// Symbolic: one run takes any number of rows.
    Dynamic,
    /// Fixed to this many rows per run (1: one query at a time).
    Fixed(usize),
}

/// Which runtime executes a model's runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnnxRuntime {
    /// tract, in pure Rust (the default).
    #[default]
    Tract,
    /// ONNX Runtime from the shared library at `library`, with `threads` intra-op threads
    /// (0: its default, one per core).
    Ort { library: PathBuf, threads: usize },
}

/// A loaded, optimised ONNX graph; `Send + Sync`, and [`OnnxModel::infer`] takes `&self`, so
/// one model serves concurrent callers (each tract run has its own state; ONNX Runtime runs
/// one at a time).
pub struct OnnxModel {
    /// The file, for error messages.
    path: String,
    plan: Arc<TypedRunnableModel>,
    /// With [`OnnxRuntime::Ort`]: the session that runs every query (tract's plans only check
    /// the graph then).
    ort: Option<OrtSession>,
    /// With a dynamic batch axis: plans optimised for a concrete number of rows, made on first
    /// use (see [`OnnxModel::plan`]).
    concrete: Option<Concrete>,
    batch_axis: BatchAxis,
    input_name: String,
    input_shape: Vec<usize>,
    output_name: String,
    output_shape: Vec<usize>,
}

/// Plans for concrete batch sizes up to [`MAX_CONCRETE_BATCH`] rows, built the first time a
/// size is run. tract optimises concrete shapes much further than a symbolic batch axis
/// (measured with `examples/onnx_latency` on a PyTorch CNN, 2 conv + 2 dense layers, p50:
/// 344 us -> 155 us for one query, 312 us -> 250 us per query in batches of 32); building
/// one costs tens of ms, once per size.
struct Concrete {
    proto: ModelProto,
    dir: Option<String>,
    input: GraphInput,
    output: String,
    plans: std::sync::Mutex<std::collections::HashMap<usize, Arc<TypedRunnableModel>>>,
}

/// Largest batch that gets its own concrete plan; larger batches run the symbolic plan.
const MAX_CONCRETE_BATCH: usize = 64;

/// The graph's one float32 input, as declared in the file.
#[derive(Clone)]
struct GraphInput {
    name: String,
    /// `Ok(b)`: fixed to b rows; `Err(name)`: symbolic, with its `dim_param` name if it has
    /// one that is a plain identifier.
    batch: Result<usize, Option<String>>,
    shape: Vec<usize>,
}

impl OnnxModel {
    /// Loads the ONNX file `path` and optimises it for the batch axis it declares.
    ///
    /// `output` names the graph output to serve; `None` picks the first float32 output of
    /// rank 2 (skl2onnx's `probabilities` with zipmap disabled, not its int64 `label`), else
    /// the first float32 output whose rank the file does not declare.
    ///
    /// # Errors
    /// [`NnError::Onnx`] naming the file and the problem: not ONNX; more or fewer than one
    /// input, or an input that is not float32 with a batch axis and fixed per-query axes; no
    /// such output, or one that is not float32 with the batch as first axis; external tensor
    /// data outside the file's folder; an operator tract does not have, or a shape it cannot
    /// infer (the message names the node and its operator).
    pub fn load(path: &Path, output: Option<&str>) -> Result<OnnxModel, NnError> {
        OnnxModel::load_with(path, output, &OnnxRuntime::Tract)
    }

    /// [`OnnxModel::load`], with `runtime` running the queries. tract checks the graph either
    /// way.
    ///
    /// # Errors
    /// Those of [`OnnxModel::load`]; with [`OnnxRuntime::Ort`] also a library that cannot be
    /// loaded (or is older than 1.17) and a model ONNX Runtime refuses.
    pub fn load_with(path: &Path, output: Option<&str>, runtime: &OnnxRuntime) -> Result<OnnxModel, NnError> {
        let err = |message: String| NnError::Onnx { path: path.display().to_string(), message };
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).map_err(|e| err(format!("not a readable ONNX model: {e:#}")))?;
        let graph = proto.graph.as_ref().ok_or_else(|| err("the file holds no graph".into()))?;
        check_external_data(graph).map_err(err)?;
        check_operators(&onnx, graph).map_err(err)?;
        let input = single_input(graph).map_err(err)?;
        let output_name = choose_output(graph, output).map_err(err)?;
        let dir = path.parent().and_then(|d| d.to_str());
        let (plan, batch_axis, output_shape) = build(&onnx, &proto, dir, &input, &output_name).map_err(err)?;
        let ort = match runtime {
            OnnxRuntime::Tract => None,
            OnnxRuntime::Ort { library, threads } => {
                Some(OrtSession::open(path, library, *threads, &input.name, &output_name).map_err(err)?)
            }
        };
        let concrete = (batch_axis == BatchAxis::Dynamic && ort.is_none()).then(|| Concrete {
            proto: proto.clone(),
            dir: dir.map(str::to_owned),
            input: input.clone(),
            output: output_name.clone(),
            plans: Default::default(),
        });
        Ok(OnnxModel {
            path: path.display().to_string(),
            plan,
            ort,
            concrete,
            batch_axis,
            input_name: input.name,
            input_shape: input.shape,
            output_name,
            output_shape,
        })
    }

    /// Name of the graph input queries are fed to.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Shape of one query: the input's axes after the batch axis (e.g. `[1, 28, 28]`).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Values in one query: the product of [`OnnxModel::input_shape`].
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Name of the graph output that is served.
    pub fn output_name(&self) -> &str {
        &self.output_name
    }

    /// Shape of one query's answer: the output's axes after the batch axis (e.g. `[10]`).
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// Values in one query's answer: the product of [`OnnxModel::output_shape`].
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product()
    }

    /// How rows are batched through the graph.
    pub fn batch_axis(&self) -> BatchAxis {
        self.batch_axis
    }

    /// Runs `batch` queries: `input` is `[batch, input_len]` row-major f32, the result
    /// `[batch, output_len]` row-major f32.
    ///
    /// # Errors
    /// [`NnError::Invalid`] for input of the wrong length or `batch == 0`; [`NnError::Onnx`]
    /// if tract fails at run time (which load-time checks should have ruled out).
    pub fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        let d = self.input_len();
        if batch == 0 || input.len() != batch * d {
            return Err(NnError::Invalid(format!("{} input values are not {batch} queries of {d} values", input.len())));
        }
        match self.batch_axis {
            BatchAxis::Dynamic => self.run(input, batch),
            BatchAxis::Fixed(b) => self.run_padded(input, batch, b),
        }
    }

    /// Rows `b` at a time; the last group is padded with zero rows.
    fn run_padded(&self, input: &[f32], batch: usize, b: usize) -> Result<Vec<f32>, NnError> {
        let (d, w) = (self.input_len(), self.output_len());
        let mut out = Vec::with_capacity(batch * w);
        for rows in input.chunks(b * d) {
            let mut group = rows.to_vec();
            group.resize(b * d, 0.0);
            out.extend_from_slice(&self.run(&group, b)?[..rows.len() / d * w]);
        }
        Ok(out)
    }

    /// One run of the plan on `rows` rows.
    fn run(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, NnError> {
        let runtime = |e: TractError| NnError::Onnx { path: self.path.clone(), message: format!("run failed: {e:#}") };
        let shape: Vec<usize> = std::iter::once(rows).chain(self.input_shape.iter().copied()).collect();
        if let Some(ort) = &self.ort {
            let out = ort.run(input, &shape).map_err(|message| NnError::Onnx { path: self.path.clone(), message })?;
            return self.checked(out, rows);
        }
        let x = Tensor::from_shape(&shape, input).map_err(runtime)?;
        let y = self.plan(rows).run(tvec!(x.into())).map_err(runtime)?;
        let y = y[0].to_plain_array_view::<f32>().map_err(runtime)?;
        self.checked(y.iter().copied().collect(), rows)
    }

    fn checked(&self, out: Vec<f32>, rows: usize) -> Result<Vec<f32>, NnError> {
        if out.len() != rows * self.output_len() {
            return Err(NnError::Invalid(format!("the model returned {} values for {rows} queries", out.len())));
        }
        Ok(out)
    }
}

impl OnnxModel {
    /// The plan for `rows` rows: a concrete one (built now if this size is new) for a dynamic
    /// batch axis and up to [`MAX_CONCRETE_BATCH`] rows, else the symbolic or fixed plan. A
    /// concrete plan that fails to build is not retried: the general plan serves that size.
    fn plan(&self, rows: usize) -> Arc<TypedRunnableModel> {
        let Some(c) = self.concrete.as_ref().filter(|_| rows <= MAX_CONCRETE_BATCH) else { return self.plan.clone() };
        let mut plans = c.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans
            .entry(rows)
            .or_insert_with(|| {
                let onnx = tract_onnx::onnx();
                plan_for(&onnx, &c.proto, c.dir.as_deref(), &c.input, &c.output, Ok(rows)).map_or_else(|_| self.plan.clone(), |(p, _)| p)
            })
            .clone()
    }
}

impl fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("runtime", &if self.ort.is_some() { "onnxruntime" } else { "tract" })
            .field("input", &(&self.input_name, &self.input_shape))
            .field("output", &(&self.output_name, &self.output_shape))
            .field("batch_axis", &self.batch_axis)
            .finish()
    }
}

impl DeployedModel for OnnxModel {
    fn outputs(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, NnError> {
        self.infer(input, batch)
    }
}

/// The element type of a value, if declared.
fn tensor_type(v: &ValueInfoProto) -> Option<&pb::type_proto::Tensor> {
    match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(t),
    }
}

/// `FLOAT`, `INT64`, ... for an ONNX element type.
fn type_name(elem_type: i32) -> String {
    pb::tensor_proto::DataType::try_from(elem_type).map_or_else(|_| format!("type {elem_type}"), |t| t.as_str_name().to_string())
}

/// `name: FLOAT [N, 64]`, for error messages.
fn describe(v: &ValueInfoProto) -> String {
    let Some(t) = tensor_type(v) else { return format!("{}: not a tensor", v.name) };
    let dims = t.shape.as_ref().map(|s| {
        let d: Vec<String> = s
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Dim::DimValue(n)) => n.to_string(),
                Some(Dim::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        format!(" [{}]", d.join(", "))
    });
    format!("{}: {}{}", v.name, type_name(t.elem_type), dims.unwrap_or_default())
}

fn describe_all(values: &[&ValueInfoProto]) -> String {
    values.iter().map(|v| describe(v)).collect::<Vec<_>>().join(", ")
}

/// The graph's one float32 input `[batch, d1, .., dn]` with fixed `d1..dn`.
fn single_input(graph: &GraphProto) -> Result<GraphInput, String> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&ValueInfoProto> = graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let [input] = inputs[..] else {
        return Err(format!(
            "the graph has {} inputs ({}); parm serves graphs with exactly one float32 input",
            inputs.len(),
            describe_all(&inputs)
        ));
    };
    let t = tensor_type(input).filter(|t| t.elem_type == FLOAT).ok_or_else(|| format!("input {} is not float32", describe(input)))?;
    let dims = t.shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
    let fixed = |d: &pb::tensor_shape_proto::Dimension| match d.value {
        Some(Dim::DimValue(n)) if n >= 1 => usize::try_from(n).ok(),
        _ => None,
    };
    let shape: Option<Vec<usize>> = dims.iter().skip(1).map(fixed).collect();
    let shape = shape
        .filter(|_| dims.len() >= 2)
        .ok_or_else(|| format!("input {} must be [batch, d1, ..] with fixed d1.. (the shape of one query)", describe(input)))?;
    let batch = match &dims[0].value {
        Some(Dim::DimParam(p)) => Err(is_identifier(p).then(|| p.clone())),
        _ => fixed(&dims[0]).ok_or(None),
    };
    Ok(GraphInput { name: input.name.clone(), batch, shape })
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The output to serve: `wanted`, or the first float32 output of rank 2 (then of
/// undeclared rank).
fn choose_output(graph: &GraphProto, wanted: Option<&str>) -> Result<String, String> {
    let all: Vec<&ValueInfoProto> = graph.output.iter().collect();
    let float = |o: &&&ValueInfoProto| tensor_type(o).is_some_and(|t| t.elem_type == FLOAT);
    let rank = |o: &ValueInfoProto| tensor_type(o).and_then(|t| t.shape.as_ref()).map(|s| s.dim.len());
    let found = match wanted {
        Some(name) => {
            let o = all.iter().find(|o| o.name == name).ok_or_else(|| format!("no output {name:?}; outputs: {}", describe_all(&all)))?;
            Some(o).filter(float).ok_or_else(|| format!("output {} is not float32", describe(o)))?
        }
        None => all
            .iter()
            .filter(float)
            .find(|o| rank(o) == Some(2))
            .or_else(|| all.iter().filter(float).find(|o| rank(o).is_none()))
            .ok_or_else(|| format!("no float32 output of rank 2 among: {}; name the one to serve", describe_all(&all)))?,
    };
    Ok(found.name.clone())
}

/// Refuses a top-level node whose operator tract does not implement, naming both (operators
/// inside subgraphs are checked by tract's analysis, with its own message).
fn check_operators(onnx: &tract_onnx::Onnx, graph: &GraphProto) -> Result<(), String> {
    match graph.node.iter().find(|n| !onnx.op_register.0.contains_key(&n.op_type)) {
        Some(n) => {
            let domain = if n.domain.is_empty() { "ai.onnx".to_string() } else { n.domain.clone() };
            Err(format!("node {:?} uses operator {} (domain {domain}), which tract does not implement", n.name, n.op_type))
        }
        None => Ok(()),
    }
}

/// Refuses initializers stored in external files outside the model's folder.
fn check_external_data(graph: &GraphProto) -> Result<(), String> {
    for t in &graph.initializer {
        for e in t.external_data.iter().filter(|e| e.key == "location") {
            let p = Path::new(&e.value);
            if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
                return Err(format!("initializer {:?} refers to external data {:?} outside the model's folder", t.name, e.value));
            }
        }
    }
    Ok(())
}

type Built = (Arc<TypedRunnableModel>, BatchAxis, Vec<usize>);

/// A runnable plan for the input's batch axis: symbolic if declared so and tract keeps it
/// symbolic, else fixed (to 1 for a symbolic axis tract could not keep).
fn build(onnx: &tract_onnx::Onnx, proto: &ModelProto, dir: Option<&str>, input: &GraphInput, output: &str) -> Result<Built, String> {
    let plan = |batch: Result<usize, Option<String>>| plan_for(onnx, proto, dir, input, output, batch).map_err(|e| format!("{e:#}"));
    match &input.batch {
        Ok(b) => plan(Ok(*b)).map(|(p, s)| (p, BatchAxis::Fixed(*b), s)),
        Err(sym) => match plan(Err(sym.clone())) {
            Ok((p, s)) => Ok((p, BatchAxis::Dynamic, s)),
            Err(dynamic) => plan(Ok(1)).map(|(p, s)| (p, BatchAxis::Fixed(1), s)).map_err(|_| dynamic),
        },
    }
}

/// Parses, types and optimises the graph with input `[batch, input.shape..]` and the one
/// output `output`; returns the plan and the output's per-query shape.
fn plan_for(
    onnx: &tract_onnx::Onnx,
    proto: &ModelProto,
    dir: Option<&str>,
    input: &GraphInput,
    output: &str,
    batch: Result<usize, Option<String>>,
) -> TractResult<(Arc<TypedRunnableModel>, Vec<usize>)> {
    let parsed = onnx.parse(proto, dir)?;
    ensure!(parsed.unresolved_inputs.is_empty(), "nodes read values no node writes: {:?}", parsed.unresolved_inputs);
    let mut model = parsed.model;
    model.select_output_outlets(&[parsed.outlets_by_name[output]])?;
    let n: TDim = match batch {
        Ok(b) => b.into(),
        Err(sym) => model.symbols.sym(sym.as_deref().unwrap_or("N")).into(),
    };
    let shape: TVec<TDim> = std::iter::once(n.clone()).chain(input.shape.iter().map(|&d| d.into())).collect();
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?;
    let typed = model.into_optimized()?;
    let fact = typed.output_fact(0)?;
    ensure!(fact.datum_type == f32::datum_type(), "output {output} is {:?}, not f32", fact.datum_type);
    let dims = fact.shape.dims();
    ensure!(dims.first() == Some(&n), "output {output} has shape {:?}: its first axis is not the batch axis {n}", fact.shape);
    let per_query = dims[1..].iter().map(|d| d.to_i64().ok().and_then(|v| usize::try_from(v).ok()));
    let per_query: Option<Vec<usize>> = per_query.collect();
    let per_query = per_query.with_context(|| format!("output {output} has shape {:?}: its per-query axes are not fixed", fact.shape))?;
    Ok((typed.into_runnable()?, per_query))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tract_onnx::pb::tensor_shape_proto::Dimension;
    use tract_onnx::pb::{NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, type_proto};

    use super::*;
    use crate::testing::{onnx_fixtures, read_npy};

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn onnx_model_is_send_and_sync() {
        assert_send_sync::<OnnxModel>();
    }

    /// A float32 value `[dims]`; a dim < 0 is the symbol `N`.
    fn value(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
        let dim =
            |&d: &i64| Dimension { value: Some(if d < 0 { Dim::DimParam("N".into()) } else { Dim::DimValue(d) }), ..Default::default() };
        let shape = TensorShapeProto { dim: dims.iter().map(dim).collect() };
        let tensor = type_proto::Tensor { elem_type, shape: Some(shape) };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
            ..Default::default()
        }
    }

    /// A graph of one node `op(inputs) -> y`, written to a temporary file.
    fn one_node(dir: &Path, op: &str, inputs: Vec<ValueInfoProto>, output: ValueInfoProto) -> std::path::PathBuf {
        with_initializers(dir, op, inputs, output, vec![])
    }

    /// [`one_node`], the node also reading `initializers` (after the inputs).
    fn with_initializers(
        dir: &Path,
        op: &str,
        inputs: Vec<ValueInfoProto>,
        output: ValueInfoProto,
        initializer: Vec<TensorProto>,
    ) -> std::path::PathBuf {
        let node = NodeProto {
            name: "the_node".into(),
            op_type: op.into(),
            input: inputs.iter().map(|i| i.name.clone()).chain(initializer.iter().map(|t| t.name.clone())).collect(),
            output: vec![output.name.clone()],
            ..Default::default()
        };
        let graph =
            GraphProto { name: "g".into(), node: vec![node], input: inputs, output: vec![output], initializer, ..Default::default() };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(graph),
            ..Default::default()
        };
        let path = dir.join(format!("{op}.onnx"));
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    fn load_err(path: &Path) -> String {
        OnnxModel::load(path, None).expect_err("must not load").to_string()
    }

    #[test]
    fn an_operator_tract_lacks_fails_at_load_naming_node_and_operator() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_node(dir.path(), "NoSuchOp", vec![value("x", FLOAT, &[-1, 4])], value("y", FLOAT, &[-1, 4]));
        let e = load_err(&path);
        assert!(e.contains("node \"the_node\" uses operator NoSuchOp (domain ai.onnx), which tract does not implement"), "{e}");
        assert!(e.starts_with(&path.display().to_string()), "{e}");
    }

    /// A known operator on shapes that do not fit (Gemm of [N, 4] by [3, 2]) fails at load,
    /// naming the node.
    #[test]
    fn shapes_that_do_not_fit_fail_at_load_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let w = TensorProto { name: "w".into(), dims: vec![3, 2], data_type: FLOAT, float_data: vec![0.0; 6], ..Default::default() };
        let path = with_initializers(dir.path(), "Gemm", vec![value("x", FLOAT, &[-1, 4])], value("y", FLOAT, &[-1, 2]), vec![w]);
        let e = load_err(&path);
        assert!(e.contains("the_node"), "{e}");
    }

    #[test]
    fn inputs_other_than_one_float32_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let two = one_node(dir.path(), "Add", vec![value("a", FLOAT, &[-1, 4]), value("b", FLOAT, &[-1, 4])], value("y", FLOAT, &[-1, 4]));
        let e = load_err(&two);
        assert!(e.contains("2 inputs") && e.contains("a: FLOAT [N, 4]") && e.contains("b: FLOAT"), "{e}");
        let ints = one_node(dir.path(), "Relu", vec![value("x", 7, &[-1, 4])], value("y", 7, &[-1, 4]));
        assert!(load_err(&ints).contains("x: INT64 [N, 4] is not float32"), "{}", load_err(&ints));
        let no_batch = one_node(dir.path(), "Sigmoid", vec![value("x", FLOAT, &[4])], value("y", FLOAT, &[4]));
        assert!(load_err(&no_batch).contains("must be [batch, d1, ..]"), "{}", load_err(&no_batch));
        std::fs::write(dir.path().join("junk.onnx"), b"not a protobuf at all").unwrap();
        assert!(load_err(&dir.path().join("junk.onnx")).contains("not a readable ONNX model"));
    }

    #[test]
    fn a_fixed_batch_runs_in_padded_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_node(dir.path(), "Relu", vec![value("x", FLOAT, &[2, 3])], value("y", FLOAT, &[2, 3]));
        let m = OnnxModel::load(&path, None).unwrap();
        assert_eq!(m.batch_axis(), BatchAxis::Fixed(2));
        assert_eq!((m.input_shape(), m.output_shape()), (&[3][..], &[3][..]));
        let x = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0];
        assert_eq!(m.infer(&x, 3).unwrap(), [1.0, 0.0, 3.0, 0.0, 5.0, 0.0, 7.0, 0.0, 9.0]);
        assert!(m.infer(&x[..8], 3).is_err());
        let named = OnnxModel::load(&path, Some("x")).expect_err("x is not an output").to_string();
        assert!(named.contains("no output \"x\"; outputs: y: FLOAT [2, 3]"), "{named}");
    }

    fn int64s(name: &str, v: &[i64]) -> TensorProto {
        TensorProto { name: name.into(), dims: vec![v.len() as i64], data_type: 7, int64_data: v.to_vec(), ..Default::default() }
    }

    /// A graph that only holds for one row (a Reshape to a constant `[1, 4]`) cannot run with
    /// a symbolic batch; it is served one row at a time.
    #[test]
    fn a_graph_tract_cannot_batch_runs_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (value("x", FLOAT, &[-1, 4]), value("y", FLOAT, &[1, 4]));
        let path = with_initializers(dir.path(), "Reshape", vec![x], y, vec![int64s("shape", &[1, 4])]);
        let m = OnnxModel::load(&path, None).unwrap();
        assert_eq!(m.batch_axis(), BatchAxis::Fixed(1));
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(m.infer(&x, 3).unwrap(), x);
    }

    #[test]
    fn external_data_outside_the_models_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut shape = int64s("shape", &[]);
        shape.external_data = vec![StringStringEntryProto { key: "location".into(), value: "../../etc/passwd".into() }];
        let path = with_initializers(dir.path(), "Reshape", vec![value("x", FLOAT, &[-1, 4])], value("y", FLOAT, &[-1, 4]), vec![shape]);
        let e = load_err(&path);
        assert!(e.contains("outside the model's folder"), "{e}");
    }

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "value {i}: {g} vs {w}");
        }
    }

    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d).map(|i| ((i * 37) % 101) as f32 / 101.0).collect()
    }

    /// tract and onnxruntime agree on the MLP and CNN fixtures; a batch of 3 equals 3 single runs.
    #[test]
    fn mlp_and_cnn_fixtures_match_onnxruntime() {
        let Some(fx) = onnx_fixtures() else { return };
        for (file, shape) in [("mlp.onnx", vec![784]), ("cnn.onnx", vec![1, 28, 28])] {
            let m = OnnxModel::load(&fx.path(file), None).unwrap();
            assert_eq!((m.input_name(), m.input_shape(), m.output_name(), m.output_shape()), ("input", &shape[..], "logits", &[10][..]));
            assert_eq!(m.batch_axis(), BatchAxis::Dynamic);
            let x = rows(3, m.input_len());
            let y = m.infer(&x, 3).unwrap();
            let one_by_one: Vec<f32> = x.chunks(m.input_len()).flat_map(|r| m.infer(r, 1).unwrap()).collect();
            close(&y, &one_by_one, 1e-5);
            let full: Vec<usize> = std::iter::once(3).chain(shape).collect();
            close(&y, &fx.onnxruntime(&fx.path(file), &x, &full, "logits"), 1e-4);
        }
    }

    /// skl2onnx's LogisticRegression: the default output is `probabilities` (not the int64
    /// `label`), the ml operators run, and predictions match the labels and onnxruntime.
    #[test]
    fn sklearn_fixture_serves_probabilities() {
        let Some(fx) = onnx_fixtures() else { return };
        let path = fx.path("sklearn.onnx");
        let m = OnnxModel::load(&path, None).unwrap();
        assert_eq!(
            (m.input_name(), m.input_shape(), m.output_name(), m.output_shape()),
            ("float_input", &[64][..], "probabilities", &[10][..])
        );
        let label = OnnxModel::load(&path, Some("label")).expect_err("label is int64").to_string();
        assert!(label.contains("label: INT64") && label.contains("not float32"), "{label}");
        let (x, shape) = read_npy(&fx.path("digits_x.npy"));
        let (y, _) = read_npy(&fx.path("digits_y.npy"));
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let p = m.infer(&x, shape[0]).unwrap();
        let right = p.chunks(10).zip(&y).filter(|(p, y)| crate::argmax(p) == Some(**y as usize)).count();
        assert!(right as f64 > 0.95 * shape[0] as f64, "{right} of {} right", shape[0]);
        close(&p[..50 * 10], &fx.onnxruntime(&path, &x[..50 * 64], &[50, 64], "probabilities"), 1e-4);
    }
}
