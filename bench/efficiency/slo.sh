#!/usr/bin/env bash
# Throughput at a latency objective: for each setup, the highest open-loop Poisson rate at
# which p99 <= the objective with no errors, beside its closed-loop saturation; then overload
# at 1.5x and 3x that rate for the parm setups (p99 of admitted queries, fraction shed, peak
# memory), and the frontend's own time per request at the objective rate.
#
# Setups (bench/efficiency/setups.sh; all serve the Fashion-MNIST MLP, one [1, 784] FP32
# query per OIP gRPC ModelInfer request from the same load generator, oip-load):
#   mlserver        MLServer, numpy runtime, no batching
#   triton          tritonserver (PyPI nvidia-pytriton, CPU, python backend, numpy), no batching
#   triton-batched  the same with Triton's dynamic batcher (max_queue_delay 100 us, batch <= 64)
#   parm            `parm serve` + one `parm worker`
#   parm-batched    the same with `--dispatch-max-batch BATCH` (frontend-side adaptive batching)
#   parm-coded      `parm serve --k 2` + a deployed worker + a parity worker
#   parm-inproc, parm-inproc-batched, parm-inproc-coded
#                   the same three with the models run by `parm serve` itself (`--deployed
#                   inproc:MODEL`, `--parity inproc:PARITY`): one process, no worker
#   parm-count-only `parm` with `--queue-target-ms 0` (only --max-inflight sheds), for the
#                   overload comparison only
#
# Search: a rate passes when each of TRIALS trials of TRIAL_S seconds (after 1 s warm-up)
# has p99 <= objective, no errors, nothing shed and at least 95% of the rate answered
# (a failed trial ends that rate's trials). Bisection over [0, 1.5 x saturation] for STEPS
# steps; the answer is the highest rate that passed. Saturation: closed loop, 32 outstanding.
#
# CPUs: with PIN=1 (default) and 2 or more CPUs, the load generator runs on the last CPU and
# every server process on the others (taskset), so that the client's work does not count
# against the servers; on a 2-core machine each setup's processes share one core.
#
# Usage: bench/efficiency/slo.sh
# Environment: SETUPS (all nine), OBJECTIVES ("5 10", ms), TRIAL_S (5), TRIALS (2), STEPS (7),
# BATCH (32), MLSERVER_BATCH_TIME (0.0005), OVERLOAD_SETUPS ("parm parm-count-only
# parm-batched parm-coded parm-inproc parm-inproc-batched parm-inproc-coded"; empty: skip), PIN (1), PARM_NO_BUILD=1 skips the build.
# Writes bench/results/slo.json (one row per setup and objective), slo-overload.json,
# slo-trials.jsonl (every load run) and slo.md (the tables). Every row also says what the
# harness cost: the load generator's send lag (p99 of how late requests started against their
# Poisson schedule, the worst trial at the rate found) and the CPU time the VM's hypervisor
# stole meanwhile (oip-load's send_lag_us and cpu_stolen).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
read -r -a objectives <<< "${OBJECTIVES:-5 10}"
trial_s=${TRIAL_S:-5}; trials=${TRIALS:-2}; steps=${STEPS:-7}
batch=${BATCH:-32}
mlbatch_time=${MLSERVER_BATCH_TIME:-0.0005}
all_setups=(mlserver triton triton-batched parm parm-batched parm-coded parm-inproc parm-inproc-batched parm-inproc-coded)
read -r -a setups <<< "${SETUPS:-${all_setups[*]}}"
read -r -a overload <<< "${OVERLOAD_SETUPS-parm parm-count-only parm-batched parm-coded parm-inproc parm-inproc-batched parm-inproc-coded}"
parm=$root/target/release/parm
load=$root/target/release/oip-load
model=$root/models/fashion-mnist/deployed.bpk
parity=$root/models/fashion-mnist/parity-k2-addition.bpk
res=$root/bench/results
source "$root/scripts/lib/procs.sh"
source "$root/bench/efficiency/setups.sh"

for s in "${setups[@]}" "${overload[@]}"; do
  [[ " ${all_setups[*]} parm-count-only " == *" $s "* ]] || { echo "unknown setup $s (known: ${all_setups[*]} parm-count-only)" >&2; exit 1; }
done
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
[ -f "$parity" ] || { echo "no $parity: run 'parm train-parity --k 2' first" >&2; exit 1; }

ncpu=$(nproc)
load_cpu=""
if [ "${PIN:-1}" = 1 ] && [ "$ncpu" -ge 2 ]; then
  load_cpu=$((ncpu - 1)); SERVER_CPUS="0-$((ncpu - 2))"
fi
cpus="servers on CPUs ${SERVER_CPUS:-any}, load generator on CPU ${load_cpu:-any} ($ncpu CPUs)"
echo "$cpus"

has() { [[ " ${setups[*]} ${overload[*]} " == *" $1 "* ]]; }
read -r -a ports <<< "$(free_ports 2)"
has mlserver && mlserver_setup mlserver "${ports[0]}" "${ports[1]}" ""
has parm && parm_setup parm 1
has parm-count-only && parm_setup parm-count-only 1 --queue-target-ms 0
has parm-batched && parm_setup parm-batched 1 --dispatch-max-batch "$batch"
has parm-coded && parm_setup parm-coded 2
has parm-inproc && parm_inproc_setup parm-inproc 1
has parm-inproc-batched && parm_inproc_setup parm-inproc-batched 1 --dispatch-max-batch "$batch"
has parm-inproc-coded && parm_inproc_setup parm-inproc-coded 2
has triton && triton_setup triton
has triton-batched && triton_setup triton-batched --dynamic-batching
mlserver_wait_ready

: > "$res/slo-trials.jsonl"
# load SETUP PHASE ARGS...: one oip-load run on the load CPU; prints its JSON line (with setup
# and phase added) and appends it to slo-trials.jsonl.
load() {
  local setup=$1 phase=$2; shift 2
  local t m i; read -r t m i <<< "${target[$setup]}"
  local cmd=("$load" --target "$t" --model "$m" --input "$i" --warmup 1 "$@")
  [ -z "$load_cpu" ] || cmd=(taskset -c "$load_cpu" "${cmd[@]}")
  local line; line=$("${cmd[@]}")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(setup=sys.argv[2], phase=sys.argv[3], loadavg_1m=float(sys.argv[4])); print(json.dumps(d))' \
    "$line" "$setup" "$phase" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$res/slo-trials.jsonl"
}
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))' "$1" "$2"; }

# passes SETUP RATE OBJECTIVE_MS: 0 when every trial meets the objective.
passes() {
  local line
  for _ in $(seq "$trials"); do
    line=$(load "$1" "search-$3ms" --rate "$2" --duration "$trial_s")
    [ "$(field "$line" "int(errors == 0 and shed == 0 and latency_us['p99'] <= $3 * 1000 and throughput >= 0.95 * rate)")" = 1 ] || return 1
  done
}

declare -A sat best
rows=()
for s in "${setups[@]}"; do
  sat[$s]=$(field "$(load "$s" saturation --concurrency 32 --duration "$trial_s")" "round(throughput)")
  for obj in "${objectives[@]}"; do
    lo=0 hi=$(python3 -c "print(1.5 * ${sat[$s]})") n=0
    for _ in $(seq "$steps"); do
      mid=$(python3 -c "print(round(($lo + $hi) / 2))")
      if passes "$s" "$mid" "$obj"; then lo=$mid; else hi=$mid; fi
      n=$((n + 1))
    done
    best[$s,$obj]=$lo
    rows+=("{\"setup\": \"$s\", \"objective_p99_ms\": $obj, \"max_rate_qps\": $lo, \"trials\": $trials, \"steps\": $n, \"trial_s\": $trial_s, \"saturation_qps\": ${sat[$s]}, \"cpus\": \"$cpus\"}")
    echo "$s: p99 <= $obj ms up to $lo req/s (saturation ${sat[$s]} req/s)" >&2
  done
done

# The frontend's own time per request (parm_frontend_time_seconds) at the 5 ms objective rate:
# p50 from the histogram's counts added during one run.
frontend_p50_us() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def buckets(text):
    out = {}
    for m in re.finditer(r'^parm_frontend_time_seconds_bucket\{[^}]*le="([^"]+)"\} (\S+)$', text, re.M):
        out[float("inf") if m[1] == "+Inf" else float(m[1])] = float(m[2])
    return out
a, b = buckets(open(sys.argv[1]).read()), buckets(open(sys.argv[2]).read())
d = sorted((le, b[le] - a.get(le, 0)) for le in b)
total = d[-1][1]
prev_le, prev_c = 0.0, 0.0
for le, c in d:
    if c >= total / 2:  # linear within the bucket, as Prometheus' histogram_quantile does
        print(round(1e6 * (prev_le + (le - prev_le) * (total / 2 - prev_c) / max(c - prev_c, 1e-9)), 1))
        break
    prev_le, prev_c = le, c
PY
}
declare -A own=()
for s in parm parm-batched parm-coded parm-inproc parm-inproc-batched parm-inproc-coded; do
  [[ " ${setups[*]} " == *" $s "* ]] && [ "${best[$s,5]:-0}" -gt 0 ] || continue
  curl -sf "http://${fe_http[$s]}/metrics" > "$work/m0"
  load "$s" frontend-time --rate "${best[$s,5]}" --duration "$trial_s" > /dev/null
  curl -sf "http://${fe_http[$s]}/metrics" > "$work/m1"
  own[$s]=$(frontend_p50_us "$work/m0" "$work/m1")
  echo "$s: frontend's own time p50 ${own[$s]} us at ${best[$s,5]} req/s" >&2
done

# Overload: 1.5x and 3x the setup's 5 ms objective rate (parm-count-only: parm's), 2 x TRIAL_S
# seconds each; the frontend's peak RSS reset before each run (clear_refs 5) and read after.
over=()
for s in "${overload[@]}"; do
  base=${best[${s/parm-count-only/parm},5]:-0}
  [ "$base" -gt 0 ] || { echo "overload $s: no 5 ms objective rate measured for it; skipped" >&2; continue; }
  for f in 1.5 3; do
    echo 5 > "/proc/${fe_pid[$s]}/clear_refs" 2>/dev/null || true
    rate=$(python3 -c "print(round($f * $base))")
    line=$(load "$s" "overload-${f}x" --rate "$rate" --duration $((2 * trial_s)))
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/${fe_pid[$s]}/status")
    over+=("$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); n=d["requests"]+d["shed"]+d["errors"]
print(json.dumps({"setup": sys.argv[2], "factor": float(sys.argv[3]), "offered_qps": d["rate"], "admitted_p99_ms": d["latency_us"]["p99"] / 1e3,
  "admitted_p50_ms": d["latency_us"]["p50"] / 1e3, "shed_fraction": round(d["shed"] / max(n, 1), 4), "shed_p99_ms": d["shed_latency_us"]["p99"] / 1e3,
  "errors": d["errors"], "answered_qps": d["throughput"], "frontend_peak_rss_mib": round(int(sys.argv[4]) / 1024, 1),
  "send_lag_p99_ms": d.get("send_lag_us", {}).get("p99", 0) / 1e3, "cpu_stolen": d.get("cpu_stolen")}))' "$line" "$s" "$f" "$hwm")")
  done
done

python3 - "$res" "${#own[@]}" "${rows[@]}" -- "${over[@]}" <<PY
import json, sys
res, rows, over = sys.argv[1], [], []
args = sys.argv[3:]
cut = args.index("--")
rows = [json.loads(r) for r in args[:cut]]
over = [json.loads(r) for r in args[cut + 1:]]
own = {$([ "${#own[@]}" -eq 0 ] || for s in "${!own[@]}"; do printf '"%s": %s, ' "$s" "${own[$s]}"; done)}
trials = [json.loads(l) for l in open(f"{res}/slo-trials.jsonl")]
for r in rows:
    if r["setup"] in own and r["objective_p99_ms"] == 5:
        r["frontend_time_p50_us"] = own[r["setup"]]
    # The harness's cost in the trials at the rate found (none when no rate passed).
    at = [t for t in trials if t["setup"] == r["setup"] and t["phase"] == f'search-{r["objective_p99_ms"]}ms' and t.get("rate") == r["max_rate_qps"]]
    r["send_lag_p99_ms_max"] = max((t.get("send_lag_us", {}).get("p99", 0) / 1e3 for t in at), default=None)
    r["cpu_stolen_max"] = max((t["cpu_stolen"] for t in at if t.get("cpu_stolen") is not None), default=None)
json.dump(rows, open(f"{res}/slo.json", "w"), indent=1)
json.dump(over, open(f"{res}/slo-overload.json", "w"), indent=1)
by = {(r["setup"], r["objective_p99_ms"]): r for r in rows}
objs = sorted({r["objective_p99_ms"] for r in rows})
def num(v, f="{:.2f}"):
    return "-" if v is None else f.format(v)
lines = ["| setup | saturation req/s (closed loop, 32 outstanding) | " + " | ".join(f"max req/s at p99 <= {o:g} ms" for o in objs)
         + " | frontend's own time p50 us | send lag p99 ms (worst) | CPU stolen (worst) |",
         "|---|---|" + "---|" * len(objs) + "---|---|---|"]
for s in dict.fromkeys(r["setup"] for r in rows):
    cells = [f'{by[(s, o)]["max_rate_qps"]:,}' for o in objs]
    t = by[(s, objs[0])].get("frontend_time_p50_us", "")
    lag = max((by[(s, o)]["send_lag_p99_ms_max"] for o in objs if by[(s, o)]["send_lag_p99_ms_max"] is not None), default=None)
    stolen = max((by[(s, o)]["cpu_stolen_max"] for o in objs if by[(s, o)]["cpu_stolen_max"] is not None), default=None)
    lines.append(f'| {s} | {by[(s, objs[0])]["saturation_qps"]:,} | ' + " | ".join(cells) + f" | {t} | {num(lag)} | {num(stolen, '{:.1%}')} |")
ml = {o: by.get(("mlserver", o), {}).get("max_rate_qps") for o in objs}
tb = {o: by.get(("triton-batched", o), {}).get("max_rate_qps") for o in objs}
for s in ("parm", "parm-batched", "parm-coded", "parm-inproc", "parm-inproc-batched", "parm-inproc-coded"):
    for o in objs:
        if (s, o) in by and ml[o]:
            extra = f', {by[(s, o)]["max_rate_qps"] / tb[o]:.1f}x triton-batched' if tb[o] else ""
            lines.append(f'\n{s} at p99 <= {o:g} ms: {by[(s, o)]["max_rate_qps"] / ml[o]:.1f}x mlserver{extra}')
if over:
    lines += ["", "| setup | offered (x objective rate) | offered req/s | admitted p50 / p99 ms | shed | shed p99 ms | other errors | frontend peak RSS MiB | send lag p99 ms | CPU stolen |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for o in over:
        lines.append(f'| {o["setup"]} | {o["factor"]}x | {o["offered_qps"]:,.0f} | {o["admitted_p50_ms"]:.2f} / {o["admitted_p99_ms"]:.2f} | '
                     f'{100 * o["shed_fraction"]:.1f}% | {o["shed_p99_ms"]:.2f} | {o["errors"]} | {o["frontend_peak_rss_mib"]} | '
                     f'{o["send_lag_p99_ms"]:.2f} | {num(o["cpu_stolen"], "{:.1%}")} |')
lines.append(f"\n{rows[0]['cpus'] if rows else ''}")
open(f"{res}/slo.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
