#!/usr/bin/env bash
# End to end, "protect your own model" as a user does it, on a scikit-learn model exported to
# ONNX (skl2onnx) and the user's data as .npy files (and as numpy's .npz), nothing from parm's
# built-in data sets:
#   ONNX F + --data -> parm train-parity -> parm eval (A_a, A_d, JSON)
#   -> two `parm worker --model F.onnx` (one stalled 2 s per request) + a parity worker
#   -> parm serve -> 200 concurrent requests: every one answered, reconstructions marked and
#   scored against the labels.
# Fixtures come from tests/onnx/fixtures.sh (a venv in target/onnx-venv). Every process it
# started is killed on exit. Exit status non-zero on any failure.
#
# Usage: [PARM=path/to/parm] tests/foreign/run.sh   (default: builds parm with `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
parm=${PARM:-$root/target/release/parm}
fx=$root/target/onnx-fixtures
source "$root/scripts/lib/procs.sh"

[ -n "${PARM:-}" ] || cargo build --release --quiet
tests/onnx/fixtures.sh "$fx" >/dev/null
py=$root/target/onnx-venv/bin/python
data=(--data "$fx/digits_x.npy" --labels "$fx/digits_y.npy")

"$parm" train-parity --deployed "$fx/sklearn.onnx" "${data[@]}" --k 2 --distill 1 --hidden 256,128 --out "$work/parity"
"$parm" eval --deployed "$fx/sklearn.onnx" --parity "$work/parity.bpk" "${data[@]}" --k 2 --json "$work/eval.json"
# The same data as one .npz written by numpy (savez_compressed, arrays x and y) gives the same report.
"$py" -c 'import sys, numpy as np; np.savez_compressed(sys.argv[1], x=np.load(sys.argv[2]), y=np.load(sys.argv[3]))' \
  "$work/digits.npz" "$fx/digits_x.npy" "$fx/digits_y.npy"
"$parm" eval --deployed "$fx/sklearn.onnx" --parity "$work/parity.bpk" --data "$work/digits.npz" --k 2 --json "$work/eval-npz.json"

start d0 "$parm" worker --model "$fx/sklearn.onnx" --name digits --listen 127.0.0.1:0
start d1 "$parm" worker --model "$fx/sklearn.onnx" --name digits --listen 127.0.0.1:0 --fault delay_ms=2000,prob=1.0
start p0 "$parm" worker --model "$work/parity.bpk" --name parity --listen 127.0.0.1:0
d0=$(addr d0 "listening on"); d1=$(addr d1 "listening on"); p0=$(addr p0 "listening on")
start serve "$parm" serve --deployed "$d0,$d1" --parity "$p0" --k 2 --model-name digits --deployed-model digits \
  --parity-model parity --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
url=$(addr serve "listening on")

"$py" - "$url" "$fx" "$work/eval.json" "$work/eval-npz.json" <<'PY'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import numpy as np

url, fx, report = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
from_npz = json.load(open(sys.argv[4]))
assert all(report[key] == from_npz[key] for key in ("available", "degraded")), (report, from_npz)
x, y = np.load(f"{fx}/digits_x.npy"), np.load(f"{fx}/digits_y.npy")
for key in ("available", "degraded", "default"):
    assert 0.0 <= report[key] <= 1.0, report
assert report["degraded"] > 3 * report["default"], report

name = json.load(urllib.request.urlopen(f"http://{url}/v2/models/digits"))["inputs"][0]["name"]

def ask(i):
    body = json.dumps({"inputs": [{"name": name, "shape": [1, 64], "datatype": "FP32", "data": x[i].tolist()}]}).encode()
    t = time.time()
    r = urllib.request.urlopen(urllib.request.Request(f"http://{url}/v2/models/digits/infer", body, {"Content-Type": "application/json"}), timeout=30)
    out = json.load(r)
    pred = int(np.argmax(out["outputs"][0]["data"]))
    return out.get("parameters", {}).get("parm_reconstructed", False), pred == y[i], time.time() - t

n = 200
with ThreadPoolExecutor(16) as pool:
    results = list(pool.map(ask, range(n)))
rec = [r for r in results if r[0]]
print(f"answered {len(results)}/{n}, reconstructed {len(rec)}, reconstructed correct {sum(r[1] for r in rec)}/{len(rec)}, "
      f"A_a {report['available']:.4f} A_d {report['degraded']:.4f}, slowest answer {max(r[2] for r in results) * 1000:.0f} ms")
assert len(results) == n and len(rec) > 0
assert max(r[2] for r in results) < 1.5, "a request waited for the stalled instance"
PY
