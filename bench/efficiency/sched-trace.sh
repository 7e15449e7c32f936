#!/usr/bin/env bash
# How the CPU scheduler shares one core between `parm serve` and `parm worker` at load (issue
# 19): both on CPU 0, oip-load on CPU 1 (one [1, 784] FP32 query per OIP gRPC ModelInfer, the
# Fashion-MNIST MLP), open loop at each RATE for DURATION s, with `perf sched record` on both
# CPUs for the middle of the run. For each rate it prints the client's latencies, how busy
# CPU 0 was, CPU per request (serve's and worker's), and the *convoys*: stretches in which
# the two processes alternated in runs of 1.5 ms or more (each waiting for the other's time
# slice), with their share of the recorded time. Needs perf (Debian `linux-perf`) and root.
#
# Usage: bench/efficiency/sched-trace.sh [RATE ...]   (default: 5600 8000)
# Environment: DURATION (12 s; the trace covers 8 s from the 3rd), PARM (the binary),
# PARM_NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
command -v perf > /dev/null || { echo "perf not found (Debian: apt install linux-perf)" >&2; exit 1; }
rates=("${@:-5600 8000}")
read -r -a rates <<< "${rates[*]}"
duration=${DURATION:-12}
parm=${PARM:-$root/target/release/parm}
model=$root/models/fashion-mnist/deployed.bpk
[ -f "$model" ] || { echo "no $model: run 'parm train' (or 'parm demo') first" >&2; exit 1; }
source "$root/scripts/lib/procs.sh"
SERVER_CPUS=0
source "$root/bench/efficiency/setups.sh"
parm_setup pair 1
parm_wait_ready pair
wpid=${pids[0]} fpid=${fe_pid[pair]} grpc=${target[pair]%% *}

for rate in "${rates[@]}"; do
  taskset -c 1 target/release/oip-load --target "$grpc" --model fashion-mnist --rate "$rate" \
    --duration "$duration" --warmup 1 > "$work/load.json" &
  lp=$!
  sleep 3
  perf sched record -q -a -o "$work/sched.data" -- sleep 8 > /dev/null 2>&1
  wait "$lp"
  perf sched timehist -i "$work/sched.data" 2> /dev/null > "$work/timehist.txt"
  python3 - "$rate" "$wpid" "$fpid" "$work/load.json" "$work/timehist.txt" <<'PY'
import json, sys
rate, wpid, fpid = float(sys.argv[1]), sys.argv[2], sys.argv[3]
d = json.load(open(sys.argv[4])); lat = d["latency_us"]
rows = []  # (end s, cpu, task, sched delay ms, run ms)
for line in open(sys.argv[5]).read().splitlines()[3:]:
    p = line.split()
    try:
        rows.append((float(p[0]), p[1], p[2], float(p[-2]), float(p[-1])))
    except (ValueError, IndexError):
        continue
span = rows[-1][0] - rows[0][0]
cpu0 = [r for r in rows if r[1] == "[0000]"]
pid = lambda task: task.rsplit("/", 1)[-1].split("[")[-1].rstrip("]")
mine = [r for r in cpu0 if pid(r[2]) in (wpid, fpid)]
busy = sum(r[4] for r in mine) / 1e3
per_request = lambda p: 1e6 * sum(r[4] for r in mine if pid(r[2]) == p) / 1e3 / (span * d["throughput"])
# Convoys: runs >= 1.5 ms of either process, chained while less than 20 ms apart, 3 or more.
long_runs = [r for r in mine if r[4] >= 1.5]
chains = []
for r in long_runs:
    if chains and r[0] - chains[-1][-1][0] < 0.020:
        chains[-1].append(r)
    else:
        chains.append([r])
convoys = [c for c in chains if len(c) >= 3]
in_convoy = sum(c[-1][0] - c[0][0] + c[0][4] / 1e3 for c in convoys)
delays = sorted(r[3] for r in mine)
print(f"{rate:.0f} req/s: p50 / p99 / p99.9 / max {lat['p50']/1e3:.2f} / {lat['p99']/1e3:.2f} / {lat['p99_9']/1e3:.2f} / {lat['max']/1e3:.1f} ms; "
      f"CPU 0 {100 * busy / span:.0f}% serve + worker ({1e6 * busy / (span * d['throughput']):.0f} us per request: "
      f"serve {per_request(fpid):.0f}, worker {per_request(wpid):.0f}); "
      f"their scheduling delay p99 / max {delays[int(0.99 * len(delays))]:.2f} / {delays[-1]:.1f} ms; "
      f"convoys {len(convoys)} in {span:.1f} s, {100 * in_convoy / span:.1f}% of the time, longest {1e3 * max((c[-1][0] - c[0][0] + c[0][4] / 1e3 for c in convoys), default=0):.0f} ms")
PY
done
