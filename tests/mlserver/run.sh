#!/usr/bin/env bash
# Any OIP server as a model instance (issue 5, item 4): the deployed model served by MLServer
# (PyPI `mlserver`, a custom numpy runtime reading parm's burnpack weights,
# tests/mlserver/parm_runtime.py) behind the parm frontend, with parm's own worker running the
# parity model. Two MLServer processes are the deployed instances, one `parm worker` the parity
# instance (k = 2), `parm serve` the frontend; then tests/mlserver/test_mlserver.py checks that
# answers through parm match MLServer's own, that with one MLServer stalled (SIGSTOP) its
# queries are answered with reconstructions equal to Fp(X) - F(0) from the parity worker, and
# that with it killed every query is still answered; a second frontend with --batch-coding
# gets the same checks for batch requests (one batched request per batch to MLServer). The decode grace is 500 ms (default 2):
# MLServer takes a few ms per query, so with the default a parity output often wins the race
# against a healthy MLServer, and the equality checks want originals. Not in CI (installs MLServer, ~1 min
# per MLServer start on 2 cores). Every process it started is killed on exit.
#
# Usage: [PARM_NO_BUILD=1] tests/mlserver/run.sh   (venv in target/mlserver-venv, 1-epoch models in
#                                        target/mlserver-models, trained if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
parm=$root/target/release/parm
venv=$root/target/mlserver-venv
models=$root/target/mlserver-models
source "$root/scripts/lib/procs.sh"

[ -n "${PARM_NO_BUILD:-}" ] || cargo build --release --quiet -p parm
if ! "$venv/bin/python" -c "import mlserver, cbor2, numpy, tritonclient.grpc" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check mlserver cbor2 numpy 'tritonclient[grpc]'
fi

paths=(--models-dir "$models" --data-dir "$root/data")
[ -f "$models/fashion-mnist/deployed.bpk" ] || "$parm" train "${paths[@]}" --epochs 1 --force
[ -f "$models/fashion-mnist/parity-k2-addition.bpk" ] || "$parm" train-parity "${paths[@]}" --k 2 --epochs 1 --force

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# mlserver_repo DIR: an MLServer model repository serving deployed.bpk as model "deployed"
# on fresh loopback ports (HTTP, gRPC; metrics off), inference in the server process; tensor
# names as a parm worker has them ("input", "logits").
mlserver_repo() {
  local dir=$1; mkdir -p "$dir/deployed"
  cat > "$dir/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": $(free_port), "grpc_port": $(free_port),
 "metrics_endpoint": null, "parallel_workers": 0, "debug": false}
JSON
  cat > "$dir/deployed/model-settings.json" <<JSON
{"name": "deployed", "implementation": "parm_runtime.ParmMlp",
 "parameters": {"uri": "$models/fashion-mnist/deployed.bpk", "version": "1"},
 "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
 "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
JSON
}
setting() { "$venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1/settings.json" "$2"; }

# wait_ready NAME URL: waits (180 s) until GET URL answers 200.
wait_ready() {
  for _ in $(seq 1800); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$2" 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "$1 not ready at $2; its stderr:" >&2; tail -n 30 "$work/$1.err" >&2; exit 1
}

for m in m0 m1; do
  mlserver_repo "$work/$m"
  start "$m" env PYTHONPATH="$root/tests/mlserver" "$venv/bin/mlserver" start "$work/$m"
done
start p0 "$parm" worker --model "$models/fashion-mnist/parity-k2-addition.bpk" --listen 127.0.0.1:0
p0=$(addr p0 "listening on")
for m in m0 m1; do
  wait_ready "$m" "http://127.0.0.1:$(setting "$work/$m" http_port)/v2/models/deployed/ready"
done
m0=127.0.0.1:$(setting "$work/m0" grpc_port); m1=127.0.0.1:$(setting "$work/m1" grpc_port)
start serve "$parm" serve --deployed "$m0,$m1" --parity "$p0" --k 2 --model-name fashion-mnist \
  --instance-timeout-ms 3000 --decode-grace-ms 500 --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
# The same instances behind a second frontend that codes over batches (a [B, 784] request is
# one batched request to MLServer, two such share one batched parity request).
start serveb "$parm" serve --deployed "$m0,$m1" --parity "$p0" --k 2 --model-name fashion-mnist \
  --instance-timeout-ms 3000 --decode-grace-ms 500 --batch-coding --listen 127.0.0.1:0 --grpc-listen off
export PARM_HTTP_URL; PARM_HTTP_URL=$(addr serve "listening on")
export PARM_BATCH_HTTP_URL; PARM_BATCH_HTTP_URL=$(addr serveb "listening on")
export PARM_GRPC_URL; PARM_GRPC_URL=$(addr serve "grpc listening on")
export MLSERVER0_GRPC=$m0 MLSERVER1_GRPC=$m1 PARITY_GRPC=$p0
export MLSERVER0_PID=${pids[0]}
export FASHION_MNIST_TEST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
[ -f "$FASHION_MNIST_TEST" ] || FASHION_MNIST_TEST=$root/data/fashion-mnist/t10k-images-idx3-ubyte.gz
echo "mlserver suite: deployed on MLServer $m0, $m1; parity worker $p0; frontend HTTP $PARM_HTTP_URL"
set +e
"$venv/bin/python" "$root/tests/mlserver/test_mlserver.py"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  for n in serve serveb m0 m1; do echo "--- $n stderr:"; tail -n 20 "$work/$n.err"; done
fi
exit "$status"
