#!/usr/bin/env bash
# Overload of one `parm serve` + one `parm worker` (the Fashion-MNIST MLP), open loop: for each
# rate, p99 of admitted queries, the fraction shed and how fast shed requests were answered.
# The frontend and the worker share CPU 0, the load generator (oip-load, one [1, 784] query per
# OIP gRPC ModelInfer) runs on CPU 1. A quicker look at admission control than slo.sh, which
# finds each setup's objective rate first.
#
# Usage: bench/efficiency/overload.sh [RATE ...]   (default: 5000 7500 15000 requests/s)
# Environment: PARM (the binary; default target/release/parm), SERVE_FLAGS (extra `parm serve`
# flags, e.g. "--queue-target-ms 2"), WORKER_FLAGS, INPROC=1 (no worker: `parm serve` runs the
# model itself, `--deployed inproc:MODEL`; with K=2 also the parity model; PAUSE_MS does not
# apply), K (1; 2: coded, k = 2, with a parity worker or in-process parity model),
# DURATION (6 s, after 2 s of warm-up), PAUSE_MS (stop the worker with SIGSTOP for this long,
# 4 s into each run: a pause under load, to see admission get back to shedding nothing),
# WATCH=1 (also print the frontend's admission gauges every 0.25 s: seconds since the run
# started, parm_inflight_bound, parm_inflight_queries, parm_shed_requests_total),
# PARM_NO_BUILD=1 skips the build.
# Prints one line per rate, ending with CPU 0's busy share and each oip-load thread's share of
# CPU 1 over the run (a client thread near 100% means the load generator, not the server, is
# the limit).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
rates=("${@:-5000 7500 15000}")
read -r -a rates <<< "${rates[*]}"
root=$PWD
parm=${PARM:-$root/target/release/parm}
model=$root/models/fashion-mnist/deployed.bpk
[ -f "$model" ] || "$parm" train
source "$root/scripts/lib/procs.sh"
SERVER_CPUS=0
source "$root/bench/efficiency/setups.sh"
parity=$root/models/fashion-mnist/parity-k2-addition.bpk
# shellcheck disable=SC2086
if [ -n "${INPROC:-}" ]; then parm_inproc_setup parm "${K:-1}" ${SERVE_FLAGS:-}; else parm_setup parm "${K:-1}" ${SERVE_FLAGS:-}; fi
grpc=${target[parm]%% *}
tck=$(getconf CLK_TCK)
# cpu_busy N: "BUSY ALL" ticks of CPU N so far (/proc/stat; idle and iowait are not busy).
cpu_busy() { awk -v c="cpu$1" '$1 == c {a = 0; for (i = 2; i <= NF; i++) a += $i; print a - $5 - $6, a}' /proc/stat; }
# thread_ticks PID: "COMM#TID:TICKS ..." for each thread of PID (user + system time).
thread_ticks() {
  local f
  for f in /proc/"$1"/task/*/stat; do
    sed 's/^\([0-9]*\) (\(.*\)) /\2#\1 /' "$f" | awk '{printf "%s:%d ", $1, $13 + $14}'
  done
}
parm_wait_ready parm
wpid=${pids[0]}
for rate in "${rates[@]}"; do
  if [ -n "${PAUSE_MS:-}" ]; then
    (sleep 4; kill -STOP "$wpid"; sleep "$(python3 -c "print($PAUSE_MS / 1e3)")"; kill -CONT "$wpid") &
  fi
  if [ -n "${WATCH:-}" ]; then
    rm -f "$work/done"
    (t0=$(date +%s.%N)
     until [ -f "$work/done" ]; do
       curl -sf "http://${fe_http[parm]}/metrics" | awk -v t0="$t0" -v t="$(date +%s.%N)" \
         '/^parm_inflight_bound / {b = $2} /^parm_inflight_queries / {q = $2} /^parm_shed_requests_total / {s = $2}
          END {printf "  %.2f s: bound %s, in flight %s, shed %s\n", t - t0, b, q, s}'
       sleep 0.25
     done) &
    watcher=$!
  fi
  taskset -c 1 target/release/oip-load --target "$grpc" --model fashion-mnist --rate "$rate" \
    --duration "${DURATION:-6}" --warmup 2 > "$work/load.json" 2> "$work/load.err" &
  lp=$!
  # CPU over the run, warm-up included: CPU 0's busy share (every server process) and each
  # oip-load thread's share of CPU 1 (its runtime thread does the gRPC work; the main thread
  # sends on schedule, yielding while it waits), to tell when the client is the limit.
  sleep 0.2
  cpu0=$(cpu_busy 0) client0=$(thread_ticks "$lp") t0=$(date +%s.%N)
  sleep "$(python3 -c "print(${DURATION:-6} + 2 - 0.7)")"
  cpu1=$(cpu_busy 0) client1=$(thread_ticks "$lp") t1=$(date +%s.%N)
  wait "$lp"
  python3 -c "
import json
d = json.load(open('$work/load.json')); n = d['requests'] + d['shed']; l = d['latency_us']; s = d['shed_latency_us']
el, tck = $t1 - $t0, $tck
(b0, a0), (b1, a1) = map(int, '$cpu0'.split()), map(int, '$cpu1'.split())
c0 = dict(x.rsplit(':', 1) for x in '$client0'.split()); c1 = dict(x.rsplit(':', 1) for x in '$client1'.split())
client = ', '.join(f'{k.split(\"#\")[0]} {(int(v) - int(c0.get(k, 0))) / tck / el:.0%}' for k, v in sorted(c1.items()))
print(f\"rate $rate/s: admitted p50/p99/p99.9 {l['p50']/1e3:.2f}/{l['p99']/1e3:.2f}/{l['p99_9']/1e3:.2f} ms, \"
      f\"answered {d['throughput']:.0f}/s, shed {d['shed']} ({100*d['shed']/max(n,1):.1f}%), shed p50/p99 {s['p50']/1e3:.2f}/{s['p99']/1e3:.2f} ms, errors {d['errors']}, \"
      f\"send lag p99 {d['send_lag_us']['p99']/1e3:.2f} ms, CPU stolen {d['cpu_stolen'] or 0:.1%}; \"
      f\"CPU 0 busy {(b1 - b0) / max(a1 - a0, 1):.0%}, oip-load threads: {client}\")"
  if [ -n "${WATCH:-}" ]; then touch "$work/done"; wait "$watcher"; fi
done
