#!/usr/bin/env bash
# Efficiency (issue 5, item 10): parm (frontend + worker) vs MLServer serving the same model
# (the deployed Fashion-MNIST MLP, models/fashion-mnist/deployed.bpk) to the same load
# generator (crates/parm-bench/src/bin/oip-load.rs, OIP gRPC ModelInfer, one [1, 784] FP32
# query per request) on this machine, without and with each server's adaptive batching.
#
# Setups, all started once and idle while another is measured (every parm setup has its own
# workers):
#   mlserver            MLServer (PyPI, venv target/mlserver-venv), one process, inference in
#                       it (parallel_workers 0), custom numpy runtime tests/mlserver/parm_runtime.py
#   parm                `parm serve` (no parity) + one `parm worker`
#   parm-coded          `parm serve --k 2` + one deployed `parm worker` + one parity `parm worker`
#   worker              the `parm` setup's worker, directly (what the frontend adds)
#   mlserver-batched    `mlserver` with MLServer's adaptive batching on (model-settings.json
#                       max_batch_size BATCH, max_batch_time MLSERVER_BATCH_TIME s): requests
#                       arriving within max_batch_time are merged into one [b, 784] predict call
#   parm-batched        `parm` with `parm serve --dispatch-max-batch BATCH` (frontend-side
#                       adaptive batching: queries queued behind a busy instance go as one
#                       [b, 784] request; never delayed to grow a batch)
#   parm-coded-batched  `parm-coded` with the same flag (towards the deployed and parity workers)
# Pairs compared: parm and parm-coded with mlserver (no batching anywhere), parm-batched and
# parm-coded-batched with mlserver-batched (each server batching its own way).
# Phase 1, throughput at saturation: closed loop, CONCURRENCY requests outstanding.
# Phase 2, latency at half load: open loop (Poisson) at half of the setup's median saturation
# throughput (the `worker` row at the `parm` row's rate, or at half of its own if that is
# lower: a worker cannot be measured past its saturation). Setups alternate within each of
# ROUNDS rounds (A/B interleaving), so machine load hits them alike; results are medians.
# Phase 3, latency at low load: open loop at 500 requests/s for every setup (what a query
# costs when the 2 cores are not busy).
#
# Usage: bench/efficiency/run.sh [ROUNDS (3)] [SECONDS (10)] [CONCURRENCY (32)]
# Environment: BATCH (32) largest batch of both servers' batching; MLSERVER_BATCH_TIME
# (0.0005) MLServer's max_batch_time in seconds (in a 1-round smoke test, 1 and 2 ms windows
# added 1.5 and 2.4 ms to MLServer's p50 at 500 req/s, 0.5 ms added 0.3 ms, and the longer
# windows gave no more throughput); SETUPS (all seven, in the order above) a space-separated
# subset to measure (`worker` needs `parm`); PARM_NO_BUILD=1 skips the build.
# Writes bench/results/efficiency.jsonl (every run) and efficiency.md (the tables).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
rounds=${1:-3}; secs=${2:-10}; conc=${3:-32}
batch=${BATCH:-32}
mlbatch_time=${MLSERVER_BATCH_TIME:-0.0005}
all_setups=(mlserver parm parm-coded worker mlserver-batched parm-batched parm-coded-batched)
read -r -a setups <<< "${SETUPS:-${all_setups[*]}}"
for s in "${setups[@]}"; do
  [[ " ${all_setups[*]} " == *" $s "* ]] || { echo "unknown setup $s (known: ${all_setups[*]})" >&2; exit 1; }
done
has() { [[ " ${setups[*]} " == *" $1 "* ]]; }
if has worker && ! has parm; then echo "setup worker needs setup parm (its half-load rate)" >&2; exit 1; fi
parm=$root/target/release/parm
load=$root/target/release/oip-load
venv=$root/target/mlserver-venv
model=$root/models/fashion-mnist/deployed.bpk
parity=$root/models/fashion-mnist/parity-k2-addition.bpk
out=$root/bench/results/efficiency
source "$root/scripts/lib/procs.sh"

[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
[ -f "$parity" ] || { echo "no $parity: run 'parm train-parity --k 2' first" >&2; exit 1; }

source "$root/bench/efficiency/setups.sh"

read -r -a ports <<< "$(free_ports 4)"
has mlserver && mlserver_setup mlserver "${ports[0]}" "${ports[1]}" ""
has mlserver-batched && mlserver_setup mlserver-batched "${ports[2]}" "${ports[3]}" "
 \"max_batch_size\": $batch, \"max_batch_time\": $mlbatch_time,"
has parm && parm_setup parm 1
has parm-coded && parm_setup parm-coded 2
has parm-batched && parm_setup parm-batched 1 --dispatch-max-batch "$batch"
has parm-coded-batched && parm_setup parm-coded-batched 2 --dispatch-max-batch "$batch"
has worker && target[worker]="${wtarget[parm]}"

mlserver_wait_ready

mkdir -p "$(dirname "$out")"
: > "$out.jsonl"
# run SETUP PHASE ARGS...: one oip-load run, its JSON line (with setup, phase, round, loadavg) appended.
run() {
  local setup=$1 phase=$2; shift 2
  set -- ${target[$setup]} "$@"
  local t=$1 m=$2 i=$3; shift 3
  local line; line=$("$load" --target "$t" --model "$m" --input "$i" --duration "$secs" "$@")
  local la; la=$(cut -d' ' -f1 /proc/loadavg)
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(setup=sys.argv[2], phase=sys.argv[3], round=int(sys.argv[4]), loadavg_1m=float(sys.argv[5])); print(json.dumps(d))' \
    "$line" "$setup" "$phase" "$round" "$la" | tee -a "$out.jsonl"
}
median() { python3 -c 'import json,sys,statistics as st; print(st.median(json.loads(l)["throughput"] for l in open(sys.argv[1]) if json.loads(l)["setup"]==sys.argv[2] and json.loads(l)["phase"]=="saturation"))' "$out.jsonl" "$1"; }

echo "load before: $(cat /proc/loadavg)"
echo "setups: ${setups[*]}; batching: max batch $batch, MLServer max_batch_time $mlbatch_time s"
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" saturation --concurrency "$conc"; done
done
declare -A half
for s in "${setups[@]}"; do [ "$s" = worker ] || half[$s]=$(python3 -c "print(round($(median "$s") / 2))"); done
has worker && half[worker]=$(python3 -c "print(min(${half[parm]}, round($(median worker) / 2)))")
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" half-load --rate "${half[$s]}"; done
done
for round in $(seq "$rounds"); do
  for s in "${setups[@]}"; do run "$s" low-load --rate 500; done
done
echo "load after: $(cat /proc/loadavg)"

python3 - "$out.jsonl" "$out.md" "$conc" "$batch" "$mlbatch_time" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
conc, batch, mltime = sys.argv[3], sys.argv[4], float(sys.argv[5])
present = {r["setup"] for r in rows}
def med(setup, phase, f):
    return st.median(f(r) for r in rows if r["setup"] == setup and r["phase"] == phase)
lines = [f"| setup | saturation req/s (closed loop, {conc} outstanding) | half-load rate req/s | p50 us | p99 us | p50 us at 500 req/s | errors | runs |",
         "|---|---|---|---|---|---|---|---|"]
order = ["mlserver", "parm", "parm-coded", "worker", "mlserver-batched", "parm-batched", "parm-coded-batched"]
for s in [s for s in order if s in present]:
    sat = [round(r["throughput"]) for r in rows if r["setup"] == s and r["phase"] == "saturation"]
    p50 = [r["latency_us"]["p50"] for r in rows if r["setup"] == s and r["phase"] == "half-load"]
    rate = med(s, "half-load", lambda r: r["rate"])
    p99 = med(s, "half-load", lambda r: r["latency_us"]["p99"])
    low = [r["latency_us"]["p50"] for r in rows if r["setup"] == s and r["phase"] == "low-load"]
    errs = sum(r["errors"] for r in rows if r["setup"] == s)
    lines.append(f"| {s} | {st.median(sat):.0f} ({', '.join(map(str, sat))}) | {rate:.0f} | {st.median(p50):.0f} ({', '.join(map(str, p50))}) | {p99:.0f} "
                 f"| {st.median(low):.0f} ({', '.join(map(str, low))}) | {errs} | {len(sat) + len(p50) + len(low)} |")
# parm / MLServer, each parm setup against the MLServer setup that batches as it does.
pairs = [("unbatched", "mlserver", "parm"), ("unbatched", "mlserver", "parm-coded"),
         ("batched", "mlserver-batched", "parm-batched"), ("batched", "mlserver-batched", "parm-coded-batched")]
pairs = [p for p in pairs if p[1] in present and p[2] in present]
if pairs:
    lines += ["", f"parm / MLServer (medians; batched: `parm serve --dispatch-max-batch {batch}` vs MLServer "
              f"`max_batch_size` {batch}, `max_batch_time` {mltime * 1e6:.0f} us):", "",
              "| pair | parm setup | MLServer setup | saturation req/s, parm / MLServer | ratio | p50 us at half load, parm / MLServer "
              "| p50 us at 500 req/s, parm / MLServer | ratio (MLServer / parm p50 at 500 req/s) |",
              "|---|---|---|---|---|---|---|---|"]
    for kind, m, p in pairs:
        sp, sm = med(p, "saturation", lambda r: r["throughput"]), med(m, "saturation", lambda r: r["throughput"])
        hp, hm = med(p, "half-load", lambda r: r["latency_us"]["p50"]), med(m, "half-load", lambda r: r["latency_us"]["p50"])
        lp, lm = med(p, "low-load", lambda r: r["latency_us"]["p50"]), med(m, "low-load", lambda r: r["latency_us"]["p50"])
        lines.append(f"| {kind} | {p} | {m} | {sp:.0f} / {sm:.0f} | **{sp / sm:.1f}x** | {hp:.0f} / {hm:.0f} | {lp:.0f} / {lm:.0f} | {lm / lp:.1f}x |")
if "parm" in present and "worker" in present:
    ratio = "" if "mlserver" not in present else (
        f"parm / MLServer saturation throughput: {med('parm', 'saturation', lambda r: r['throughput']) / med('mlserver', 'saturation', lambda r: r['throughput']):.1f}x; ")
    # At half load only when both ran at the same rate (the worker at parm's half-load rate).
    same = med("parm", "half-load", lambda r: r["rate"]) == med("worker", "half-load", lambda r: r["rate"])
    added = (f'{med("parm", "half-load", lambda r: r["latency_us"]["p50"]) - med("worker", "half-load", lambda r: r["latency_us"]["p50"]):.0f} us'
             if same else "n/a (the worker alone saturates below parm's half-load rate)")
    added_low = med("parm", "low-load", lambda r: r["latency_us"]["p50"]) - med("worker", "low-load", lambda r: r["latency_us"]["p50"])
    lines += ["", f"{ratio}frontend adds {added} p50 at half load, "
              f"{added_low:.0f} us at 500 req/s (parm - worker)"]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
