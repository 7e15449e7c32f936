#!/usr/bin/env bash
# Coding over batches vs row-by-row coding (issue 5, item 7): the same cluster (2 deployed
# `parm worker`s + 1 parity worker, k = 2, the Fashion-MNIST MLP) behind two frontends, one
# `parm serve` (each row of a batch joins a coding group on its own) and one
# `parm serve --batch-coding`; closed-loop oip-load with batches of BATCH rows,
# CONCURRENCY outstanding, alternating between the two for ROUNDS rounds. Prints one JSON line
# per run (rows_per_s = throughput in queries) and writes bench/results/batch-coding.jsonl.
#
# Usage: bench/efficiency/batch-coding.sh [ROUNDS (3)] [SECONDS (10)] [BATCH (8)] [CONCURRENCY (8)]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
rounds=${1:-3}; secs=${2:-10}; batch=${3:-8}; conc=${4:-8}
parm=$root/target/release/parm
load=$root/target/release/oip-load
model=$root/models/fashion-mnist/deployed.bpk
parity=$root/models/fashion-mnist/parity-k2-addition.bpk
out=$root/bench/results/batch-coding.jsonl
source "$root/scripts/lib/procs.sh"
[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm -p parm-bench --bin parm --bin oip-load
start w0 "$parm" worker --model "$model" --listen 127.0.0.1:0
start w1 "$parm" worker --model "$model" --listen 127.0.0.1:0
start p0 "$parm" worker --model "$parity" --listen 127.0.0.1:0
w0=$(addr w0 "listening on"); w1=$(addr w1 "listening on"); p0=$(addr p0 "listening on")
common=(--deployed "$w0,$w1" --parity "$p0" --k 2 --model-name fashion-mnist --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0)
start rows "$parm" serve "${common[@]}"
start batches "$parm" serve "${common[@]}" --batch-coding
declare -A target=([per-row]=$(addr rows "grpc listening on") [batch-coding]=$(addr batches "grpc listening on"))
: > "$out"
echo "load before: $(cat /proc/loadavg)"
for round in $(seq "$rounds"); do
  for s in per-row batch-coding; do
    line=$("$load" --target "${target[$s]}" --model fashion-mnist --batch "$batch" --concurrency "$conc" --duration "$secs")
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(setup=sys.argv[2], round=int(sys.argv[3]), loadavg_1m=float(open("/proc/loadavg").read().split()[0])); print(json.dumps(d))' "$line" "$s" "$round" | tee -a "$out"
  done
done
echo "load after: $(cat /proc/loadavg)"
python3 - "$out" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for s in ["per-row", "batch-coding"]:
    r = [x for x in rows if x["setup"] == s]
    print(f"{s}: rows/s median {st.median(x['rows_per_s'] for x in r):.0f} ({', '.join(str(round(x['rows_per_s'])) for x in r)}), "
          f"p50 {st.median(x['latency_us']['p50'] for x in r):.0f} us per batch, errors {sum(x['errors'] for x in r)}")
PY
