#!/usr/bin/env bash
# BENCHMARKS.md, "Protecting your own model": two foreign models, each F an ONNX file and the
# user's data .npy files made by bench/foreign/make_models.py (PyTorch CNN on Fashion-MNIST,
# scikit-learn MLPClassifier on digits):
#   parity training time and A_a / A_d / A_o (parm train-parity + parm eval, k = 2),
#   parm worker on the ONNX file, with tract and with ONNX Runtime, against ONNX Runtime in
#   Python (bench/foreign/latency.sh).
# Results in bench/results/foreign/. Usage: bench/foreign/run.sh MODELS_DIR PYTHON
#   MODELS_DIR: the output of make_models.py; PYTHON: a python with onnxruntime and numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
fx=$1; py=$2
parm=$root/target/release/parm; load=$root/target/release/oip-load
out=$root/bench/results/foreign
mkdir -p "$out"
source "$root/scripts/lib/procs.sh"

accuracy() { # NAME MODEL DATA LABELS FLAGS...
  local name=$1 model=$2 x=$3 y=$4; shift 4
  local enc=addition; [[ " $* " == *" --encoder concatenation "* ]] && enc=concatenation
  local t0; t0=$(date +%s.%N)
  "$parm" train-parity --deployed "$model" --data "$x" --labels "$y" --k 2 --out "$work/$name" "$@" 2>&1 | tail -1
  local t1; t1=$(date +%s.%N)
  # A_d over the test coding groups of 5 seeds (small test sets make one seed noisy).
  for seed in 1 2 3 4 5; do
    "$parm" eval --deployed "$model" --parity "$work/$name.bpk" --data "$x" --labels "$y" --k 2 --encoder "$enc" --seed $seed \
      --json "$work/$name-eval-$seed.json" > /dev/null
  done
  python3 - "$out/$name-eval.json" "$(echo "$t1 - $t0" | bc)" "$*" "$work/$name-eval-"{1,2,3,4,5}.json <<'PY'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[4:]]
d = runs[0]
d["degraded_by_seed"] = [r["degraded"] for r in runs]
d["degraded_mean"] = sum(d["degraded_by_seed"]) / len(runs)
d["train_parity_wall_s"], d["flags"] = float(sys.argv[2]), sys.argv[3]
json.dump(d, open(sys.argv[1], "w"), indent=1)
print(f"{d['dataset']} {d['encoder']} {sys.argv[3]}: A_a {d['available']:.4f} A_d {d['degraded_mean']:.4f} (5 seeds) train {d['train_parity_wall_s']:.1f} s")
PY
}

accuracy cnn "$fx/cnn.onnx" "$fx/fmnist_x.npy" "$fx/fmnist_y.npy" --encoder concatenation --recipe parm --epochs 10
accuracy cnn-parm-paper "$fx/cnn.onnx" "$fx/fmnist_x.npy" "$fx/fmnist_y.npy" --epochs 10
accuracy digits "$fx/digits.onnx" "$fx/digits_x.npy" "$fx/digits_y.npy" --distill 1 --hidden 256,128
accuracy digits-parm-paper "$fx/digits.onnx" "$fx/digits_x.npy" "$fx/digits_y.npy"
bench/foreign/latency.sh cnn "$fx/cnn.onnx" "$fx/fmnist_x.npy" 1,28,28 image "$py"
bench/foreign/latency.sh digits "$fx/digits.onnx" "$fx/digits_x.npy" 64 X "$py"
echo "results in $out"
