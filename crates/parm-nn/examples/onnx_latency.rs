//! In-process latency of tract on an ONNX file, one query and a batch of 32:
//! `cargo run --release -p parm-nn --example onnx_latency -- FILE.onnx [RUNS (2000)] [BATCHES (1,32)]`.
//!
//! Prints the model's shapes and batch axis, then p50 / p99 / mean of `OnnxModel::infer`
//! (input conversion, the run, output copy) after 100 warm-up runs. With `ORT_LIBRARY=PATH`
//! (and optionally `ORT_THREADS=N`) ONNX Runtime runs the model instead of tract.

use std::path::Path;
use std::time::{Duration, Instant};

use parm_nn::OnnxModel;
use parm_nn::onnx::OnnxRuntime;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: onnx_latency FILE.onnx [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.get(2).map_or(2000, |r| r.parse().expect("RUNS is a number"));
    let runtime = match std::env::var_os("ORT_LIBRARY") {
        Some(library) => OnnxRuntime::Ort {
            library: library.into(),
            threads: std::env::var("ORT_THREADS").map_or(0, |t| t.parse().expect("ORT_THREADS is a number")),
        },
        None => OnnxRuntime::Tract,
    };
    let m = OnnxModel::load_with(Path::new(path), None, &runtime).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{path}: input {} {:?}, output {} {:?}, batch {:?}",
        m.input_name(),
        m.input_shape(),
        m.output_name(),
        m.output_shape(),
        m.batch_axis()
    );
    let batches: Vec<usize> = args.get(3).map_or(vec![1, 32], |b| b.split(',').map(|n| n.parse().expect("BATCHES: numbers")).collect());
    for batch in batches {
        let x: Vec<f32> = (0..batch * m.input_len()).map(|i| (i % 97) as f32 / 97.0).collect();
        let mut t = timings(&m, &x, batch, runs);
        t.sort();
        let mean = t.iter().sum::<Duration>() / runs as u32;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "  batch {batch:>2}: p50 {:8.1} us  p99 {:8.1} us  mean {:8.1} us  ({runs} runs)",
            us(t[runs / 2]),
            us(t[runs * 99 / 100]),
            us(mean)
        );
    }
}

fn timings(m: &OnnxModel, x: &[f32], batch: usize, runs: usize) -> Vec<Duration> {
    for _ in 0..100 {
        m.infer(x, batch).expect("infer");
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(m.infer(x, batch).expect("infer"));
            t.elapsed()
        })
        .collect()
}
