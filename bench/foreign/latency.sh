#!/usr/bin/env bash
# BENCHMARKS.md, "parm worker on an ONNX model against ONNX Runtime": one ONNX file, each of
# parm's two ONNX runtimes (tract, built in; ONNX Runtime through --onnx-runtime ort, the
# library of PYTHON's onnxruntime wheel) against ONNX Runtime in Python on the same file:
#   in process, one query and batches of 32 (crates/parm-nn/examples/onnx_latency);
#   parm worker over OIP gRPC: single-query latency (closed loop, 1 outstanding) and
#   saturation throughput (16 outstanding), with and without --max-batch 16, by oip-load;
#   ONNX Runtime in Python, in process (bench/foreign/ort_baseline.py), its default threads
#   and one thread.
# Usage: bench/foreign/latency.sh NAME MODEL.onnx INPUTS.npy SHAPE INPUT_NAME PYTHON
#   e.g. cnn cnn.onnx fmnist_x.npy 1,28,28 image target/onnx-venv/bin/python
# Writes bench/results/foreign/NAME-{RUNTIME}-worker-mbB-cC.json, NAME-{RUNTIME}-inprocess.txt,
# NAME-ort.json and NAME-ort-1thread.json (RUNTIME: tract, onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
name=$1; model=$2; x=$3; shape=$4; input=$5; py=$6
parm=${PARM:-$root/target/release/parm}; load=$root/target/release/oip-load; lat=$root/target/release/examples/onnx_latency
out=$root/bench/results/foreign
mkdir -p "$out"
source "$root/scripts/lib/procs.sh"
[ "${PARM_NO_BUILD:-}" = 1 ] || cargo build -q --release -p parm --bin parm -p parm-bench --bin oip-load -p parm-nn --example onnx_latency
lib=$("$py" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])')

for runtime in tract onnxruntime; do
  flags=(); envs=()
  if [ $runtime = onnxruntime ]; then flags=(--onnx-runtime ort --ort-library "$lib"); envs=(ORT_LIBRARY="$lib"); fi
  env "${envs[@]}" "$lat" "$model" 2000 1,32 > "$out/$name-$runtime-inprocess.txt"
  for mb in 1 16; do
    start "w$runtime$mb" "$parm" worker --model "$model" --name m --listen 127.0.0.1:0 --max-batch $mb --max-queue-delay-us 200 "${flags[@]}"
    w=$(addr "w$runtime$mb" "listening on")
    for c in 1 16; do
      "$load" --target "$w" --model m --input "$input" --shape "$shape" --concurrency $c --duration 8 --warmup 2 \
        > "$out/$name-$runtime-worker-mb$mb-c$c.json"
    done
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done
"$py" bench/foreign/ort_baseline.py "$model" "$x" > "$out/$name-ort.json"
"$py" bench/foreign/ort_baseline.py "$model" "$x" --threads 1 > "$out/$name-ort-1thread.json"
cat "$out/$name"-*-inprocess.txt
for f in "$out/$name"-*-worker-mb*-c*.json "$out/$name"-ort*.json; do echo "$(basename "$f"): $(head -c 300 "$f")"; done
