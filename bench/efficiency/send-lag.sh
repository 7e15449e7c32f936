#!/usr/bin/env bash
# A/B of oip-load's dispatcher: --spin-us 0 (sleep only) vs 200 vs 1000, interleaved, against one
# parm worker pinned to CPU 0, oip-load pinned to CPU 1 (needs target/release/{parm,oip-load}
# and models/fashion-mnist/deployed.bpk). Usage: bench/efficiency/send-lag.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
taskset -c 0 target/release/parm worker --model models/fashion-mnist/deployed.bpk --listen 127.0.0.1:39555 > /dev/null 2>&1 &
w=$!
trap 'kill $w' EXIT
sleep 3
for round in 1 2; do
  for spin in 0 200 1000; do
    for rate in 1000 3000; do
      line=$(taskset -c 1 target/release/oip-load --target 127.0.0.1:39555 --model deployed --rate $rate --duration 8 --warmup 1 --spin-us $spin)
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(sys.argv[2], sys.argv[3], d["rate"], "lag p50/p99/max us", d["send_lag_us"]["p50"], d["send_lag_us"]["p99"], d["send_lag_us"]["max"], "lat p50/p99 us", d["latency_us"]["p50"], d["latency_us"]["p99"], "stolen %.3f" % (d["cpu_stolen"] or -1))' "$line" $round $spin
    done
  done
done
