#!/usr/bin/env bash
# A real Triton Inference Server as parm's deployed model, end to end (issue 15, item 7).
#
# Two tritonservers (PyPI nvidia-pytriton's CPU build, tests/triton/start.sh) serve parm's
# deployed model as the python-backend model `mlp` (numpy, weights exported from parm's .bpk
# with tests/triton/bpk_to_npz.py); a `parm worker` serves parm's parity model (k = 2); `parm
# serve` is the frontend over them, speaking OIP gRPC to Triton. tests/triton/test_triton.py
# then checks metadata, that answers through parm equal Triton's own, measures latency
# (Triton directly vs through parm) and makes triton 1 a straggler (its `mlp` sleeps SLOW_MS
# per request, via a delay file) to check every query is still answered fast, late ones with
# parameters.parm_reconstructed, then stops it (SIGSTOP) for 20 queries. Then
# train_parity_step (skipped until `parm train-parity` has --data) trains a parity model
# against Triton itself. Every process it started is killed on exit; exits non-zero on the
# first failure.
#
# Usage: [PARM=path/to/parm] [PARM_NO_BUILD=1] [PARM_MODELS_DIR=DIR] [PARM_DATA_DIR=DIR]
#        [SLOW_MS=1000] [QUERIES=100] [TRITON_PARITY=triton] tests/triton/run.sh
#   PARM             parm binary (default target/release/parm, built unless PARM_NO_BUILD=1)
#   PARM_MODELS_DIR  holds fashion-mnist/{deployed,parity-k2-addition}.bpk (default
#                    target/triton-models: 1-epoch models trained there if missing, which
#                    needs the data set in PARM_DATA_DIR, default data/)
#   TRITON_PARITY=triton  wiring test without parm models: random 784-64-10 weights, and
#                    triton 0's own `mlp` as the "parity" instance (reconstructions are then
#                    wrong, but the whole path runs)
#   KEEP_WORK=1      leave the scratch directory (logs, repositories) in place
# Output: target/triton-latency.json (the latency table).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
PARM=${PARM:-$root/target/release/parm}
models=${PARM_MODELS_DIR:-$root/target/triton-models}
data=${PARM_DATA_DIR:-$root/data}
export SLOW_MS=${SLOW_MS:-1000} QUERIES=${QUERIES:-100}
source "$root/scripts/lib/procs.sh"
source "$root/tests/triton/start.sh"
if [ -n "${KEEP_WORK:-}" ]; then trap 'keep=$work; work=/nonexistent; cleanup; echo "kept $keep" >&2' EXIT; fi
py=$TRITON_VENV/bin/python
step() { echo "== $*"; }

if [ -z "${PARM_NO_BUILD:-}" ] && [ "$PARM" = "$root/target/release/parm" ]; then cargo build --release --quiet -p parm; fi
[ -x "$PARM" ] || { echo "no parm binary at $PARM" >&2; exit 1; }

step "venv and tritonserver"
triton_venv
triton_prepare
[ -f "$TRITON_VENV/pip-seconds" ] && echo "pip install (when the venv was made): $(cat "$TRITON_VENV/pip-seconds") s"

# weights: parm's deployed model (exported) or random ones for the wiring test
step "models"
if [ "${TRITON_PARITY:-}" = triton ]; then
  "$py" "$root/tests/triton/make_mlp.py" "$work/mlp.npz"
else
  paths=(--models-dir "$models" --data-dir "$data")
  [ -f "$models/fashion-mnist/deployed.bpk" ] || "$PARM" train "${paths[@]}" --epochs 1 --force
  [ -f "$models/fashion-mnist/parity-k2-addition.bpk" ] || "$PARM" train-parity "${paths[@]}" --k 2 --epochs 1 --force
  "$py" "$root/tests/triton/bpk_to_npz.py" "$models/fashion-mnist/deployed.bpk" "$work/mlp.npz"
fi

step "two tritonservers"
triton_repo "$work/repo0" "$work/mlp.npz" --slow-ms "$SLOW_MS"
echo 0 > "$work/t1.delay"
triton_repo "$work/repo1" "$work/mlp.npz" --slow-ms "$SLOW_MS" --delay-file "$work/t1.delay"
triton_start t0 "$work/repo0"
triton_start t1 "$work/repo1"
t1_pid=${pids[-1]}
triton_wait_ready t0
triton_wait_ready t1
for t in t0 t1; do
  echo "$t: http ${TRITON_HTTP[$t]} grpc ${TRITON_GRPC[$t]} metrics ${TRITON_METRICS[$t]} (ready after ${TRITON_READY_S[$t]} s, both started together)"
done

# check_frontend NAME PARITY_ADDR PARITY_MODEL PARITY_IS_MODEL REFERENCE_ADDR:
# `parm serve` NAME over the two tritons with the given parity instance, then test_triton.py.
check_frontend() {
  local name=$1 parity=$2 parity_model=$3 is_model=$4 reference=$5
  start "$name" "$PARM" serve --deployed "${TRITON_GRPC[t0]},${TRITON_GRPC[t1]}" --parity "$parity" --k 2 \
    --model-name mlp --deployed-model mlp --parity-model "$parity_model" \
    --listen 127.0.0.1:0 --grpc-listen off
  local url; url=$(addr "$name" "listening on")
  echo "frontend $name: http $url, deployed ${TRITON_GRPC[t0]},${TRITON_GRPC[t1]} (model mlp), parity $parity ($parity_model)"
  local status=0
  env TRITON0_HTTP="${TRITON_HTTP[t0]}" TRITON0_GRPC="${TRITON_GRPC[t0]}" \
    TRITON1_HTTP="${TRITON_HTTP[t1]}" TRITON1_GRPC="${TRITON_GRPC[t1]}" TRITON1_DELAY_FILE="$work/t1.delay" \
    TRITON1_PID="$t1_pid" \
    PARM_HTTP_URL="$url" REFERENCE_GRPC="$reference" PARITY_IS_MODEL="$is_model" \
    FASHION_MNIST_TEST="$fmnist_test" LATENCY_JSON="$root/target/triton-latency-$name.json" \
    "$py" "$root/tests/triton/test_triton.py" || status=$?
  if [ "$status" -ne 0 ]; then
    for n in "$name" t0 t1; do echo "--- $n stderr (last 20 lines):"; tail -n 20 "$work/$n.err"; done
    exit "$status"
  fi
}

fmnist_test=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
[ -f "$fmnist_test" ] || fmnist_test=$data/fashion-mnist/t10k-images-idx3-ubyte.gz

if [ "${TRITON_PARITY:-}" = triton ]; then
  step "parm serve over the tritons, triton 0's mlp as the parity instance (wiring only)"
  check_frontend serve "${TRITON_GRPC[t0]}" mlp 0 ""
else
  step "parm serve over the tritons, parm worker with parity-k2-addition"
  start ref "$PARM" worker --model "$models/fashion-mnist/deployed.bpk" --listen 127.0.0.1:0
  start p0 "$PARM" worker --model "$models/fashion-mnist/parity-k2-addition.bpk" --listen 127.0.0.1:0
  check_frontend serve "$(addr p0 "listening on")" parity-k2-addition 1 "$(addr ref "listening on")"
fi
cp "$root/target/triton-latency-serve.json" "$root/target/triton-latency.json"

# train_parity_step: a parity model trained against the deployed model as Triton serves it
# (`parm train-parity --deployed http://HOST:PORT/mlp --data INPUTS.npy`: F's outputs come
# from Triton's HTTP endpoint), then served by a parm worker behind a second frontend and
# checked like the first. Skipped while `parm train-parity` has no --data.
train_parity_step() {
  step "train-parity against Triton"
  if ! "$PARM" train-parity --help | grep -qE -- '--data[[:space:]=<]'; then
    echo "skipped: $PARM train-parity has no --data flag yet"
    return 0
  fi
  # Training inputs: the first 2,000 Fashion-MNIST training images, [N, 784] float32 in
  # [0, 1], as parm's data pipeline scales them (random inputs without the data set).
  "$py" - "$data/fashion-mnist/train-images-idx3-ubyte.gz" "$work/inputs.npy" <<'PY'
import gzip, os, sys
import numpy as np
src, out = sys.argv[1], sys.argv[2]
if os.path.exists(src):
    with gzip.open(src, "rb") as f:
        raw = f.read()
    x = np.frombuffer(raw, dtype=np.uint8, offset=16, count=2000 * 784).reshape(2000, 784).astype(np.float32) / 255.0
else:
    x = np.random.default_rng(5).random((2000, 784), dtype=np.float32)
np.save(out, x)
print(f"wrote {out}: {x.shape} float32")
PY
  mkdir -p "$work/trained"
  local t0; t0=$(date +%s)
  "$PARM" train-parity --deployed "http://${TRITON_HTTP[t0]}/mlp" --data "$work/inputs.npy" --k 2 \
    --out "$work/trained/parity" --epochs 2
  echo "train-parity against Triton took $(( $(date +%s) - t0 )) s"
  local bpk
  bpk=$(ls "$work/trained/parity.bpk" "$work/trained/parity/"*.bpk 2>/dev/null | head -n 1 || true)
  [ -n "$bpk" ] || { echo "train-parity wrote no .bpk under $work/trained ($(ls -R "$work/trained"))" >&2; return 1; }
  start p1 "$PARM" worker --model "$bpk" --name parity-trained --listen 127.0.0.1:0
  # 2 epochs on 2,000 images: reconstructions are printed, not held to an accuracy bar.
  check_frontend serve-trained "$(addr p1 "listening on")" parity-trained 0 ""
}
if [ "${TRITON_PARITY:-}" != triton ]; then train_parity_step; fi

echo "triton suite passed; latency table in target/triton-latency.json"
