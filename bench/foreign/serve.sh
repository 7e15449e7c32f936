#!/usr/bin/env bash
# BENCHMARKS.md, "Protecting your own model": the PyTorch CNN served end to end with parm's
# cell-wise parity model (concatenation encoder, k = 2): two `parm worker --model cnn.onnx`
# (one stalled 2 s per request), a parity worker, `parm serve`, and 400 queries of the user's
# data from 16 clients. Prints answered / reconstructed / correct counts and the slowest answer.
# Usage: bench/foreign/serve.sh MODELS_DIR PYTHON   (MODELS_DIR from make_models.py; PYTHON
# with numpy). Trains the parity model first (about 15 s) into a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
fx=$1; py=$2
parm=$root/target/release/parm
source "$root/scripts/lib/procs.sh"
data=(--data "$fx/fmnist_x.npy" --labels "$fx/fmnist_y.npy")

"$parm" train-parity --deployed "$fx/cnn.onnx" "${data[@]}" --k 2 --encoder concatenation --recipe parm --epochs 10 \
  --out "$work/parity" 2>&1 | tail -1
start d0 "$parm" worker --model "$fx/cnn.onnx" --name cnn --listen 127.0.0.1:0
start d1 "$parm" worker --model "$fx/cnn.onnx" --name cnn --listen 127.0.0.1:0 --fault delay_ms=2000,prob=1.0
start p0 "$parm" worker --model "$work/parity.bpk" --name parity --listen 127.0.0.1:0
d0=$(addr d0 "listening on"); d1=$(addr d1 "listening on"); p0=$(addr p0 "listening on")
start serve "$parm" serve --deployed "$d0,$d1" --parity "$p0" --k 2 --encoder concatenation --model-name cnn \
  --deployed-model cnn --parity-model parity --listen 127.0.0.1:0 --grpc-listen off
url=$(addr serve "listening on")

"$py" - "$url" "$fx" <<'PY'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import numpy as np

url, fx = sys.argv[1], sys.argv[2]
x = np.load(f"{fx}/fmnist_x.npy")[:400].astype(np.float32) / 255.0
y = np.load(f"{fx}/fmnist_y.npy")[:400]
name = json.load(urllib.request.urlopen(f"http://{url}/v2/models/cnn"))["inputs"][0]["name"]

def ask(i):
    body = json.dumps({"inputs": [{"name": name, "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x[i].ravel().tolist()}]}).encode()
    t = time.time()
    req = urllib.request.Request(f"http://{url}/v2/models/cnn/infer", body, {"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=30))
    correct = int(np.argmax(out["outputs"][0]["data"])) == y[i]
    return out.get("parameters", {}).get("parm_reconstructed", False), correct, time.time() - t

with ThreadPoolExecutor(16) as pool:
    r = list(pool.map(ask, range(len(x))))
rec = [a for a in r if a[0]]
orig = [a for a in r if not a[0]]
print(f"answered {len(r)}/{len(x)}, reconstructed {len(rec)} (correct {sum(a[1] for a in rec)}), "
      f"originals correct {sum(a[1] for a in orig)}/{len(orig)}, slowest answer {max(a[2] for a in r) * 1000:.0f} ms")
PY
