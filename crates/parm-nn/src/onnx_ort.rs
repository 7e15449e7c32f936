//! ONNX Runtime (Microsoft's C++ runtime, through the `ort` crate) as the runtime of an
//! [`crate::onnx::OnnxModel`]: `parm worker --model F.onnx --onnx-runtime ort`.
//!
//! Why beside tract: on a small PyTorch CNN (2 convolutions of 5x5, 2 dense layers) tract took
//! about 3x ONNX Runtime's single-query time, most of it gathering convolution patches
//! (BENCHMARKS.md, "parm worker on an ONNX model against ONNX Runtime"). ONNX Runtime is not
//! pure Rust: its shared library (`libonnxruntime.so`, version 1.17 or newer; PyPI's
//! `onnxruntime` wheel ships one in `onnxruntime/capi/`) is loaded when the first model asks
//! for it, never linked or downloaded at build time. tract still reads and checks the graph
//! at load time (operators, shapes, names), so both runtimes accept and refuse the same files.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

/// One ONNX Runtime session of a graph, fed through its one input and read from one output.
pub struct OrtSession {
    /// `Session::run` takes `&mut self`: one run at a time per model; ONNX Runtime spreads
    /// each run over `threads` threads.
    session: Mutex<Session>,
    input: String,
    output: String,
}

/// The library the process loaded and its environment, or why it could not: ONNX Runtime is
/// loaded once per process.
static LIBRARY: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

fn environment(library: &Path) -> Result<&'static Environment, String> {
    let loaded = LIBRARY.get_or_init(|| {
        let env = ort::init_from(library).map_err(|e| e.to_string())?.with_name("parm").build().map_err(|e| e.to_string())?;
        Ok((library.to_path_buf(), env))
    });
    match loaded {
        Ok((first, env)) if first == library => Ok(env),
        Ok((first, _)) => Err(format!("ONNX Runtime is already loaded from {}; one library per process", first.display())),
        Err(e) => Err(format!("cannot load ONNX Runtime: {e}")),
    }
}

impl OrtSession {
    /// Opens `model` with the ONNX Runtime library at `library`, every graph optimisation on,
    /// `threads` intra-op threads (0: ONNX Runtime's default, one per core).
    ///
    /// # Errors
    /// A message naming the problem: the library cannot be loaded or is older than 1.17, or
    /// ONNX Runtime refuses the model.
    pub fn open(model: &Path, library: &Path, threads: usize, input: &str, output: &str) -> Result<OrtSession, String> {
        let env = environment(library)?;
        let refused = |e: &dyn std::fmt::Display| format!("ONNX Runtime refused the model: {e}");
        let mut builder = Session::builder(env)
            .map_err(|e| refused(&e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| refused(&e))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| refused(&e))?;
        }
        let session = builder.commit_from_file(model).map_err(|e| refused(&e))?;
        Ok(OrtSession { session: Mutex::new(session), input: input.into(), output: output.into() })
    }

    /// Runs `input`, row-major f32 of `shape` (batch first); returns the output row-major.
    ///
    /// # Errors
    /// ONNX Runtime's message when the run fails.
    pub fn run(&self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>, String> {
        let x = TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(ort::inputs![self.input.as_str() => x]).map_err(|e| e.to_string())?;
        let (_, y) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        Ok(y.to_vec())
    }
}
