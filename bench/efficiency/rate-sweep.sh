#!/usr/bin/env bash
# p99 against offered rate for variants of `parm serve`, interleaved (issue 19): which of two
# settings passes a latency objective more often at the same open-loop Poisson rates, on the
# same host in the same minutes. Every variant's servers start once and stay up; for each rate
# and trial, each variant in turn gets one `oip-load --rate R` run of TRIAL_S seconds. Servers on
# CPU 0, oip-load on CPU 1 (as slo.sh pins them on 2 CPUs).
#
# Usage: VARIANTS="NAME:SERVE_FLAGS;NAME:SERVE_FLAGS..." RATES="R1 R2 ..." bench/efficiency/rate-sweep.sh
#   e.g. VARIANTS="in-flight-4:--dispatch-max-batch 32 --dispatch-max-in-flight 4;in-flight-1:--dispatch-max-batch 32 --dispatch-max-in-flight 1" \
#        RATES="4500 5500" TRIALS=6 bench/efficiency/rate-sweep.sh
# A NAME that starts with "inproc" runs the model in the frontend's process (setups.sh's
# parm_inproc_setup); any other NAME gets its own `parm worker` (parm_setup).
# Environment: TRIALS (3), TRIAL_S (5), OBJECTIVE_MS (5), OUT (bench/results/rate-sweep.jsonl:
# one JSON line per trial, oip-load's with variant, rate and trial added; overwritten),
# WORKER_FLAGS, PARM_NO_BUILD=1 skips the build.
# Prints each trial, then per variant and rate: trials passing (p99 <= OBJECTIVE_MS, no errors,
# nothing shed), median p50 and p99, worst p99.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ -n "${VARIANTS:-}" ] && [ -n "${RATES:-}" ] || { sed -n '2,17p' "$0" >&2; exit 2; }
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
parm=$root/target/release/parm
model=$root/models/fashion-mnist/deployed.bpk
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
out=${OUT:-$root/bench/results/rate-sweep.jsonl}
source "$root/scripts/lib/procs.sh"
SERVER_CPUS=0
source "$root/bench/efficiency/setups.sh"

IFS=';' read -r -a variants <<< "$VARIANTS"
names=()
for v in "${variants[@]}"; do
  name=${v%%:*} flags=""
  [ "$name" = "$v" ] || flags=${v#*:}
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad variant name '$name' (letters, digits, _ . -)" >&2; exit 2; }
  # shellcheck disable=SC2086
  if [[ "$name" == inproc* ]]; then parm_inproc_setup "$name" 1 $flags; else parm_setup "$name" 1 $flags; fi
  names+=("$name")
done
for name in "${names[@]}"; do parm_wait_ready "$name"; done

: > "$out"
for rate in $RATES; do
  for trial in $(seq "${TRIALS:-3}"); do
    for name in "${names[@]}"; do
      read -r addr served input <<< "${target[$name]}"
      line=$(taskset -c 1 "$root/target/release/oip-load" --target "$addr" --model "$served" --input "$input" \
        --rate "$rate" --duration "${TRIAL_S:-5}" --warmup 1)
      python3 - "$line" "$name" "$rate" "$trial" "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
d.update(variant=sys.argv[2], rate=float(sys.argv[3]), trial=int(sys.argv[4]))
with open(sys.argv[5], "a") as f:
    f.write(json.dumps(d) + "\n")
lat, lag = d["latency_us"], d["send_lag_us"]
print(f"rate {sys.argv[3]} trial {sys.argv[4]} {sys.argv[2]}: p50 {lat['p50'] / 1e3:.2f} p99 {lat['p99'] / 1e3:.2f} ms, "
      f"shed {d['shed']}, errors {d['errors']}, send lag p99 {lag['p99'] / 1e3:.2f} ms")
PY
    done
  done
done

python3 - "$out" "${OBJECTIVE_MS:-5}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
obj = float(sys.argv[2])
print(f"\n| variant | rate req/s | trials with p99 <= {obj:g} ms | median p50 ms | median p99 ms | worst p99 ms |")
print("|---|---|---|---|---|---|")
# Rows were written rate by rate, variants in turn: first-seen order is the table's order.
for v, rate in dict.fromkeys((r["variant"], r["rate"]) for r in rows):
    t = [r for r in rows if r["variant"] == v and r["rate"] == rate]
    ok = sum(r["errors"] == 0 and r["shed"] == 0 and r["latency_us"]["p99"] <= obj * 1e3 for r in t)
    p50 = statistics.median(r["latency_us"]["p50"] for r in t) / 1e3
    p99 = [r["latency_us"]["p99"] / 1e3 for r in t]
    print(f"| {v} | {rate:,.0f} | {ok}/{len(t)} | {p50:.2f} | {statistics.median(p99):.2f} | {max(p99):.2f} |")
PY
