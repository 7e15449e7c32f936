#!/usr/bin/env bash
# Efficiency (issue 5, item 10): parm (frontend + worker) vs MLServer serving the same model
# (the deployed Fashion-MNIST MLP, models/fashion-mnist/deployed.bpk) to the same load
# generator (crates/parm-bench/src/bin/oip-load.rs, OIP gRPC ModelInfer, one [1, 784] FP32
# query per request) on this machine.
#
# Setups, all started once and idle while another is measured:
#   mlserver     MLServer (PyPI, venv target/mlserver-venv), one process, inference in it
#                (parallel_workers 0), custom numpy runtime tests/mlserver/parm_runtime.py
#   parm         `parm serve` (no parity) + one `parm worker`
#   parm-coded   `parm serve --k 2` + one deployed `parm worker` + one parity `parm worker`
#   worker       the `parm` setup's worker, directly (what the frontend adds)
# Phase 1, throughput at saturation: closed loop, CONCURRENCY requests outstanding.
# Phase 2, latency at half load: open loop (Poisson) at half of the setup's median saturation
# throughput (the `worker` row at the `parm` row's rate). Setups alternate within each of
# ROUNDS rounds (A/B interleaving), so machine load hits them alike; results are medians.
# Phase 3, latency at low load: open loop at 500 requests/s for every setup (what a query
# costs when the 2 cores are not busy).
#
# Usage: bench/efficiency/run.sh [ROUNDS (3)] [SECONDS (10)] [CONCURRENCY (32)]
# Writes bench/results/efficiency.jsonl (every run) and efficiency.md (the table).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
rounds=${1:-3}; secs=${2:-10}; conc=${3:-32}
parm=$root/target/release/parm
load=$root/target/release/oip-load
venv=$root/target/mlserver-venv
model=$root/models/fashion-mnist/deployed.bpk
parity=$root/models/fashion-mnist/parity-k2-addition.bpk
out=$root/bench/results/efficiency
source "$root/scripts/lib/procs.sh"

[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
if ! "$venv/bin/python" -c "import mlserver, cbor2, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check mlserver cbor2 numpy 'tritonclient[grpc]'
fi
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
[ -f "$parity" ] || { echo "no $parity: run 'parm train-parity --k 2' first" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# MLServer
mhttp=$(free_port); mgrpc=$(free_port)
mkdir -p "$work/mlserver/deployed"
cat > "$work/mlserver/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": $mhttp, "grpc_port": $mgrpc, "metrics_endpoint": null,
 "parallel_workers": 0, "debug": false}
JSON
cat > "$work/mlserver/deployed/model-settings.json" <<JSON
{"name": "deployed", "implementation": "parm_runtime.ParmMlp",
 "parameters": {"uri": "$model", "version": "1"},
 "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
 "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
JSON
start mlserver env PYTHONPATH="$root/tests/mlserver" "$venv/bin/mlserver" start "$work/mlserver"

# parm
start w0 "$parm" worker --model "$model" --listen 127.0.0.1:0
start w1 "$parm" worker --model "$model" --listen 127.0.0.1:0
start p1 "$parm" worker --model "$parity" --listen 127.0.0.1:0
w0=$(addr w0 "listening on"); w1=$(addr w1 "listening on"); p1=$(addr p1 "listening on")
start fe "$parm" serve --deployed "$w0" --model-name fashion-mnist --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
start fec "$parm" serve --deployed "$w1" --parity "$p1" --k 2 --model-name fashion-mnist --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
fe=$(addr fe "grpc listening on"); fec=$(addr fec "grpc listening on")

for _ in $(seq 1800); do
  curl -sf "http://127.0.0.1:$mhttp/v2/models/deployed/ready" > /dev/null && break
  sleep 0.1
done

declare -A target=([mlserver]="127.0.0.1:$mgrpc deployed" [parm]="$fe fashion-mnist"
                   [parm-coded]="$fec fashion-mnist" [worker]="$w0 deployed")
setups=(mlserver parm parm-coded worker)
mkdir -p "$(dirname "$out")"
: > "$out.jsonl"
# run SETUP PHASE ARGS...: one oip-load run, its JSON line (with setup, phase, round, loadavg) appended.
run() {
  local setup=$1 phase=$2; shift 2
  set -- ${target[$setup]} "$@"
  local t=$1 m=$2; shift 2
  local line; line=$("$load" --target "$t" --model "$m" --duration "$secs" "$@")
  local la; la=$(cut -d' ' -f1 /proc/loadavg)
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(setup=sys.argv[2], phase=sys.argv[3], round=int(sys.argv[4]), loadavg_1m=float(sys.argv[5])); print(json.dumps(d))' \
    "$line" "$setup" "$phase" "$round" "$la" | tee -a "$out.jsonl"
}
median() { python3 -c 'import json,sys,statistics as st; print(st.median(json.loads(l)["throughput"] for l in open(sys.argv[1]) if json.loads(l)["setup"]==sys.argv[2] and json.loads(l)["phase"]=="saturation"))' "$out.jsonl" "$1"; }

echo "load before: $(cat /proc/loadavg)"
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" saturation --concurrency "$conc"; done
done
declare -A half
for s in mlserver parm parm-coded; do half[$s]=$(python3 -c "print(round($(median "$s") / 2))"); done
half[worker]=${half[parm]}
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" half-load --rate "${half[$s]}"; done
done
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" low-load --rate 500; done
done
echo "load after: $(cat /proc/loadavg)"

python3 - "$out.jsonl" "$out.md" "$conc" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(setup, phase, f):
    return st.median(f(r) for r in rows if r["setup"] == setup and r["phase"] == phase)
lines = [f"| setup | saturation req/s (closed loop, {sys.argv[3]} outstanding) | half-load rate req/s | p50 us | p99 us | p50 us at 500 req/s | errors | runs |",
         "|---|---|---|---|---|---|---|---|"]
for s in ["mlserver", "parm", "parm-coded", "worker"]:
    sat = [round(r["throughput"]) for r in rows if r["setup"] == s and r["phase"] == "saturation"]
    p50 = [r["latency_us"]["p50"] for r in rows if r["setup"] == s and r["phase"] == "half-load"]
    rate = med(s, "half-load", lambda r: r["rate"])
    p99 = med(s, "half-load", lambda r: r["latency_us"]["p99"])
    low = [r["latency_us"]["p50"] for r in rows if r["setup"] == s and r["phase"] == "low-load"]
    errs = sum(r["errors"] for r in rows if r["setup"] == s)
    lines.append(f"| {s} | {st.median(sat):.0f} ({', '.join(map(str, sat))}) | {rate:.0f} | {st.median(p50):.0f} ({', '.join(map(str, p50))}) | {p99:.0f} "
                 f"| {st.median(low):.0f} ({', '.join(map(str, low))}) | {errs} | {len(sat) + len(p50) + len(low)} |")
ratio = med("parm", "saturation", lambda r: r["throughput"]) / med("mlserver", "saturation", lambda r: r["throughput"])
added = med("parm", "half-load", lambda r: r["latency_us"]["p50"]) - med("worker", "half-load", lambda r: r["latency_us"]["p50"])
added_low = med("parm", "low-load", lambda r: r["latency_us"]["p50"]) - med("worker", "low-load", lambda r: r["latency_us"]["p50"])
lines += ["", f"parm / MLServer saturation throughput: {ratio:.1f}x; frontend adds {added:.0f} us p50 at half load, "
          f"{added_low:.0f} us at 500 req/s (parm - worker)"]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
