#!/usr/bin/env bash
# Runs the unmodified Python tritonclient (PyPI `tritonclient[http,grpc]`) against `parm serve`:
# a virtual environment with tritonclient + pytest + numpy (kept in target/tritonclient-venv),
# 1-epoch models trained on the installed Fashion-MNIST data (kept in
# target/tritonclient-models), two deployed workers and one parity worker (k = 2) and the
# frontend on loopback ephemeral ports, then pytest on tests/tritonclient/. Every process it
# started is killed on exit. Exit status: pytest's (5, "no tests collected", counts as failure).
#
# Usage: tests/tritonclient/run.sh [pytest args...]   (builds parm with `cargo build --release`
#        unless PARM_NO_BUILD is set; PARM names another parm binary)
#        PARM_MEASURE=1 tests/tritonclient/run.sh -k latency -s   (frontend latency added, p50)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
parm=${PARM:-$root/target/release/parm}
venv=$root/target/tritonclient-venv
models=$root/target/tritonclient-models
source "$root/scripts/lib/procs.sh"

[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import tritonclient.http, tritonclient.grpc, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'tritonclient[http,grpc]' pytest numpy
fi

paths=(--models-dir "$models" --data-dir "$root/data")
[ -f "$models/fashion-mnist/deployed.bpk" ] || "$parm" train "${paths[@]}" --epochs 1 --force
[ -f "$models/fashion-mnist/parity-k2-addition.bpk" ] || "$parm" train-parity "${paths[@]}" --k 2 --epochs 1 --force

start d0 "$parm" worker --model "$models/fashion-mnist/deployed.bpk" --listen 127.0.0.1:0
start d1 "$parm" worker --model "$models/fashion-mnist/deployed.bpk" --listen 127.0.0.1:0
start p0 "$parm" worker --model "$models/fashion-mnist/parity-k2-addition.bpk" --listen 127.0.0.1:0
d0=$(addr d0 "listening on"); d1=$(addr d1 "listening on"); p0=$(addr p0 "listening on")
start serve "$parm" serve --deployed "$d0,$d1" --parity "$p0" --k 2 --model-name fashion-mnist \
  --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
export PARM_HTTP_URL; PARM_HTTP_URL=$(addr serve "listening on")
export PARM_GRPC_URL; PARM_GRPC_URL=$(addr serve "grpc listening on")
export PARM_MODEL=fashion-mnist
export PARM_WORKER_GRPC_URL=$d0   # one deployed instance, for latency comparisons
echo "tritonclient suite: HTTP $PARM_HTTP_URL, gRPC $PARM_GRPC_URL"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/tritonclient" "$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then echo "frontend stderr:"; tail -n 20 "$work/serve.err"; fi
exit "$status"
