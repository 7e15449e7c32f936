# The servers the efficiency benchmarks compare (sourced by bench/efficiency/run.sh and
# slo.sh, after scripts/lib/procs.sh). Every setup serves the same model: the deployed
# Fashion-MNIST MLP (784-...-10, $model), over OIP gRPC.
#
# The caller sets: root, parm (binary), model (.bpk), parity (.bpk, for parm-coded), work
# (procs.sh), batch (largest batch of every server's batching), mlbatch_time (MLServer's
# max_batch_time, s). Optional: SERVER_CPUS, a taskset CPU list every server process is
# pinned to (unset: not pinned); WORKER_FLAGS, extra flags of every `parm worker`.
# Each *_setup NAME ... starts one setup and sets target[NAME]="HOST:PORT MODEL INPUT".
#
#   mlserver_setup NAME HTTP GRPC BATCHING_JSON   MLServer, numpy runtime tests/mlserver/parm_runtime.py
#   mlserver_wait_ready                           waits for every MLServer started
#   parm_setup NAME K SERVE_FLAGS...              `parm serve` + own `parm worker`(s); K 2: + parity
#                                                 worker, k = 2; also sets fe_http[NAME] (metrics)
#                                                 and fe_pid[NAME] (the frontend's process)
#   parm_inproc_setup NAME K SERVE_FLAGS...       `parm serve` alone, the model (K 2: and the parity
#                                                 model, k = 2) in its own process (inproc: instances)
#   parm_wait_ready NAME                          waits (10 s) until that frontend is ready
#   triton_setup NAME [--dynamic-batching]        tritonserver from PyPI nvidia-pytriton (CPU,
#                                                 python backend, numpy; tests/triton/start.sh)

venv=${venv:-$root/target/mlserver-venv}
declare -A target wtarget fe_http fe_pid mlhttp mlpid

# server CMD...: execs CMD, pinned to SERVER_CPUS when set. Only as `start NAME server CMD...`
# (start's background subshell becomes CMD, so its pid is the server's own).
server() {
  if [ -n "${SERVER_CPUS:-}" ]; then exec taskset -c "$SERVER_CPUS" "$@"; else exec "$@"; fi
}

mlserver_venv() {
  "$venv/bin/python" -c "import mlserver, cbor2, numpy" 2>/dev/null && return
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check mlserver cbor2 numpy 'tritonclient[grpc]'
}

# free_ports N: N distinct free ports below the kernel's ephemeral range, so that no port-0
# bind or outgoing connection of the other processes takes one before MLServer (slow to start)
# binds it.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
got, socks = [], []
while len(got) < int(sys.argv[1]):
    p = random.randrange(max(1024, lo - 12000), lo)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    socks.append(s); got.append(p)
print(*got)
PY
}

# mlserver_setup NAME HTTP_PORT GRPC_PORT BATCHING_JSON: an MLServer in $work/NAME serving the
# model as "deployed" (BATCHING_JSON: extra model-settings.json keys, "" for none).
mlserver_setup() {
  local name=$1 http=$2 grpc=$3 batching=$4
  mlserver_venv
  mkdir -p "$work/$name/deployed"
  cat > "$work/$name/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": $http, "grpc_port": $grpc, "metrics_endpoint": null,
 "parallel_workers": 0, "debug": false}
JSON
  cat > "$work/$name/deployed/model-settings.json" <<JSON
{"name": "deployed", "implementation": "parm_runtime.ParmMlp",$batching
 "parameters": {"uri": "$model", "version": "1"},
 "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
 "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
JSON
  start "$name" server env PYTHONPATH="$root/tests/mlserver" "$venv/bin/mlserver" start "$work/$name"
  mlhttp[$name]=$http; mlpid[$name]=${pids[-1]}
  target[$name]="127.0.0.1:$grpc deployed input"
}

mlserver_wait_ready() {
  local name i
  for name in "${!mlhttp[@]}"; do
    for i in $(seq 1801); do
      curl -sf "http://127.0.0.1:${mlhttp[$name]}/v2/models/deployed/ready" > /dev/null && break
      if [ "$i" -gt 1800 ] || ! kill -0 "${mlpid[$name]}" 2>/dev/null || grep -q "address already in use" "$work/$name.err"; then
        echo "$name not ready (exited, could not bind, or 180 s passed); its stderr:" >&2; tail -20 "$work/$name.err" >&2; exit 1
      fi
      sleep 0.1
    done
  done
}

# parm_setup NAME K SERVE_FLAGS...: own deployed worker (and parity worker for K 2) behind a
# `parm serve`.
parm_setup() {
  local name=$1 k=$2; shift 2
  # shellcheck disable=SC2086
  start "$name-w" server "$parm" worker --model "$model" --listen 127.0.0.1:0 ${WORKER_FLAGS:-}
  local w; w=$(addr "$name-w" "listening on")
  wtarget[$name]="$w deployed input"
  local coded=()
  if [ "$k" = 2 ]; then
    # shellcheck disable=SC2086
    start "$name-p" server "$parm" worker --model "$parity" --listen 127.0.0.1:0 ${WORKER_FLAGS:-}
    coded=(--parity "$(addr "$name-p" "listening on")" --k 2)
  fi
  parm_frontend "$name" --deployed "$w" "${coded[@]}" "$@"
}

# parm_inproc_setup NAME K SERVE_FLAGS...: `parm serve` running the deployed model (and for K 2
# the parity model) itself, each behind its own compute lane: no worker process.
parm_inproc_setup() {
  local name=$1 k=$2; shift 2
  local coded=()
  [ "$k" != 2 ] || coded=(--parity "inproc:$parity" --k 2)
  parm_frontend "$name" --deployed "inproc:$model" "${coded[@]}" "$@"
}

# parm_frontend NAME SERVE_FLAGS...: the `parm serve` of setup NAME.
parm_frontend() {
  local name=$1; shift
  start "$name-fe" server "$parm" serve "$@" --model-name fashion-mnist --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0
  fe_pid[$name]=${pids[-1]}
  target[$name]="$(addr "$name-fe" "grpc listening on") fashion-mnist input"
  fe_http[$name]=$(addr "$name-fe" "listening on")
}

parm_wait_ready() {
  for _ in $(seq 100); do curl -sf "http://${fe_http[$1]}/v2/health/ready" > /dev/null && return; sleep 0.1; done
  echo "parm setup $1 not ready within 10 s; its frontend's stderr:" >&2; tail -20 "$work/$1-fe.err" >&2; exit 1
}

# triton_setup NAME [--dynamic-batching]: one tritonserver serving the same MLP (weights
# converted from $model) with numpy in its python backend, as model `mlp`; waits until ready.
triton_setup() {
  local name=$1; shift
  source "$root/tests/triton/start.sh"
  triton_venv
  triton_prepare
  [ -f "$work/mlp.npz" ] || "$TRITON_VENV/bin/python" "$root/tests/triton/bpk_to_npz.py" "$model" "$work/mlp.npz"
  triton_repo "$work/$name-repo" "$work/mlp.npz" "$@"
  TRITON_ENV=(server "${TRITON_ENV[@]}")
  triton_start "$name" "$work/$name-repo"
  TRITON_ENV=("${TRITON_ENV[@]:1}")
  triton_wait_ready "$name"
  target[$name]="${TRITON_GRPC[$name]} mlp input"
}
