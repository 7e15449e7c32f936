#!/usr/bin/env bash
# What one query costs `parm serve` + `parm worker` (issue 19, item 2): both on CPU 0, oip-load
# on CPU 1 (one [1, 784] FP32 query per OIP gRPC ModelInfer, the Fashion-MNIST MLP). For each
# binary, in turn within each round (A/B interleaving): closed-loop saturation (32
# outstanding, 5 s), then open loop at RATE req/s, where the two processes' context switches
# (/proc/PID/task/*/status) and CPU time (/proc/PID/stat) over 3 s are divided by the requests
# sent meanwhile (also the frontend's CPU alone). A fresh pair of processes (setups.sh's
# `parm` setup) per binary and round.
#
# Usage: bench/efficiency/cpu-per-query.sh [PARM_BINARY ...]   (default: target/release/parm)
#   e.g. with an older build copied aside: ... cpu-per-query.sh /tmp/parm-before target/release/parm
# Environment: ROUNDS (3), RATE (4000), MODES ("pair"; "pair inproc" also measures `parm serve`
# alone with the model in process, `--deployed inproc:MODEL`, interleaved; "shed" measures what
# a shed request costs the frontend: 1 s into the open-loop run the worker is stopped
# (SIGSTOP), admission fills, and every later request is shed, the frontend's CPU over the
# next 3 s divided by the requests sent; the worker resumes before its calls time out),
# WORKER_FLAGS, SERVE_FLAGS, PARM_NO_BUILD=1 skips the build. Prints one line per binary, mode
# and round.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
binaries=("${@:-$root/target/release/parm}")
rate=${RATE:-4000}
model=$root/models/fashion-mnist/deployed.bpk
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
source "$root/scripts/lib/procs.sh"
SERVER_CPUS=0
source "$root/bench/efficiency/setups.sh"
tck=$(getconf CLK_TCK)

switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
load() { taskset -c 1 "$root/target/release/oip-load" --target "$grpc" --model fashion-mnist "$@"; }
field() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# The worker's and the frontend's counters summed (the frontend's alone in process): `both
# switches` or `both ticks`.
both() {
  if [ "$wpid" = "$spid" ]; then "$1" "$spid"; else echo $(( $($1 "$wpid") + $($1 "$spid") )); fi
}

# shed BINARY ROUND: the frontend's CPU per shed request (see MODES).
shed() {
  local n=${#pids[@]} name=pair${#pids[@]}
  # shellcheck disable=SC2086
  parm=$1 parm_setup "$name" 1 ${SERVE_FLAGS:-}
  spid=${fe_pid[$name]} grpc=${target[$name]%% *} wpid=${pids[$n]}
  parm_wait_ready "$name"
  load --rate "$rate" --duration 5 --warmup 1 > "$work/open.json" &
  local lp=$!
  sleep 1
  kill -STOP "$wpid"
  sleep 0.5
  local f0 f1; f0=$(ticks "$spid")
  sleep 3
  f1=$(ticks "$spid")
  kill -CONT "$wpid"
  wait "$lp"
  local shed; shed=$(field "f\"{d['shed']} of {d['requests'] + d['shed']}\"" < "$work/open.json")
  python3 -c "print(f'$1 shed round $2: {1e6 * ($f1 - $f0) / $tck / ($rate * 3):.1f} us of the frontend\'s CPU per shed request at $rate req/s ($shed requests shed over the run)')"
  kill "${pids[@]:$n}" 2>/dev/null || true
  wait "${pids[@]:$n}" 2>/dev/null || true
}

measure() {
  [ "$3" = shed ] && { shed "$1" "$2"; return; }
  local round=$2 mode=$3 n=${#pids[@]} name=pair${#pids[@]}
  # shellcheck disable=SC2086
  if [ "$mode" = inproc ]; then parm=$1 parm_inproc_setup "$name" 1 ${SERVE_FLAGS:-}; else parm=$1 parm_setup "$name" 1 ${SERVE_FLAGS:-}; fi
  spid=${fe_pid[$name]} grpc=${target[$name]%% *}
  if [ "$mode" = inproc ]; then wpid=$spid; else wpid=${pids[$n]}; fi
  parm_wait_ready "$name"
  local sat; sat=$(load --concurrency 32 --duration 5 --warmup 1 | field "f\"{d['throughput']:.0f}\"")
  load --rate "$rate" --duration 8 --warmup 1 > "$work/open.json" &
  local lp=$!
  sleep 3
  local c0 t0 f0; c0=$(both switches); t0=$(both ticks); f0=$(ticks "$spid")
  sleep 3
  local c1 t1 f1; c1=$(both switches); t1=$(both ticks); f1=$(ticks "$spid")
  wait "$lp"
  local lat; lat=$(field "f\"{d['latency_us']['p50']/1e3:.2f} / {d['latency_us']['p99']/1e3:.2f}\"" < "$work/open.json")
  python3 -c "
c, t, f, n = $c1 - $c0, ($t1 - $t0) / $tck, ($f1 - $f0) / $tck, $rate * 3
print(f'$1 $mode round $round: saturation $sat req/s; at $rate req/s p50 / p99 $lat ms, '
      f'{c / n:.1f} context switches and {1e6 * t / n:.0f} us of CPU per request '
      f'({1e6 * f / n:.0f} us of it the frontend\'s)')"
  kill "${pids[@]:$n}" 2>/dev/null || true
  wait "${pids[@]:$n}" 2>/dev/null || true
}

for round in $(seq "${ROUNDS:-3}"); do
  for bin in "${binaries[@]}"; do
    for mode in ${MODES:-pair}; do measure "$bin" "$round" "$mode"; done
  done
done
