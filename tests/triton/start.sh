#!/usr/bin/env bash
# A real Triton Inference Server as parm's deployed model (issue 15, item 7).
#
# PyPI's `nvidia-pytriton` wheel ships a CPU-capable `tritonserver` (python backend only);
# this file installs it into a venv and serves an MLP computed with numpy
# (tests/triton/model.py) from a Triton model repository. Nothing is downloaded once the venv
# exists; every server listens on 127.0.0.1 only.
#
# Run it:    tests/triton/start.sh [--npz W.npz] [--slow-ms 1000] [--dynamic-batching]
#            makes the venv (target/triton-venv), a seeded random 784-64-10 MLP unless --npz
#            names weights (tests/triton/make_mlp.py describes the format; bpk_to_npz.py
#            converts parm's), a repository with models `mlp` and `mlp_slow`, starts one
#            tritonserver on free loopback ports, prints
#              triton http 127.0.0.1:P grpc 127.0.0.1:Q metrics 127.0.0.1:R repo DIR
#            once it is ready, and serves until Ctrl-C / SIGTERM (then it is killed).
# Source it: `source tests/triton/start.sh` defines the helpers below for other scripts
#            (tests/triton/run.sh); it starts nothing. The caller provides `start NAME CMD...`
#            and `$work` (scripts/lib/procs.sh: processes killed on exit).
#
#   triton_venv                    make/reuse the venv; the pip time goes to
#                                  $TRITON_VENV/pip-seconds (only when it installed)
#   triton_prepare                 finds the server in the wheel, copies the python backend
#                                  stub for this Python into backends/python/, sets
#                                  TRITON_BIN, TRITON_BACKENDS, TRITON_ENV (env for the server)
#   triton_repo DIR NPZ [--in 784] [--out 10] [--slow-ms 1000] [--delay-file F] [--dynamic-batching]
#                                  writes a model repository: `mlp` (delay 0; while F exists
#                                  its integer content is mlp's delay in ms per request) and
#                                  `mlp_slow` (--slow-ms per request), same weights
#   triton_start NAME REPO         starts a tritonserver on free loopback ports; sets
#                                  TRITON_HTTP[NAME], TRITON_GRPC[NAME], TRITON_METRICS[NAME]
#                                  (host:port); its logs: $work/NAME.{out,err}
#   triton_wait_ready NAME [SECS]  waits (default 120 s) for GET /v2/health/ready = 200;
#                                  prints the seconds it took to TRITON_READY_S[NAME]
#   free_port                      a free loopback TCP port, distinct from those handed out
#
# Environment: TRITON_VENV (target/triton-venv), TRITON_PIP_SPEC (nvidia-pytriton==0.7.0; a
# local wheel path works, e.g. /tmp/pipchk/nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl).

triton_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRITON_VENV=${TRITON_VENV:-$triton_root/target/triton-venv}
TRITON_PIP_SPEC=${TRITON_PIP_SPEC:-nvidia-pytriton==0.7.0}
declare -gA TRITON_HTTP TRITON_GRPC TRITON_METRICS TRITON_READY_S TRITON_START_NS
declare -ga triton_used_ports=()

triton_venv() {
  local py=$TRITON_VENV/bin/python
  if "$py" -c "import pytriton, numpy, cbor2" 2>/dev/null; then return; fi
  local t0; t0=$(date +%s%N)
  python3 -m venv "$TRITON_VENV"
  "$TRITON_VENV/bin/pip" install -q --disable-pip-version-check "$TRITON_PIP_SPEC" numpy cbor2
  awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f\n", (b - a) / 1e9 }' > "$TRITON_VENV/pip-seconds"
  echo "triton venv: pip install took $(cat "$TRITON_VENV/pip-seconds") s" >&2
}

triton_prepare() {
  local py=$TRITON_VENV/bin/python home pyver libdir site
  home=$("$py" -c 'import os, pytriton; print(os.path.join(os.path.dirname(pytriton.__file__), "tritonserver"))')
  pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  # The server's shared libraries (libtritonserver, ...) sit in the wheel's auditwheel
  # directory next to the package; pytriton.utils.distribution.get_libs_path() says the same.
  local libs; libs=$("$py" -c 'from pytriton.utils.distribution import get_libs_path; print(get_libs_path())')
  TRITON_BIN=$home/bin/tritonserver
  TRITON_BACKENDS=$home/backends
  local stub=$home/python_backend_stubs/$pyver/triton_python_backend_stub
  [ -x "$stub" ] || { echo "no python backend stub for Python $pyver in $home" >&2; return 1; }
  cmp -s "$stub" "$TRITON_BACKENDS/python/triton_python_backend_stub" || cp "$stub" "$TRITON_BACKENDS/python/"
  # The stub embeds libpython$pyver: take the venv's own interpreter's library (first on the
  # path) and its site-packages (numpy) so that model.py runs in the venv's Python.
  libdir=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  TRITON_ENV=(env "LD_LIBRARY_PATH=$libdir:$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "PYTHONPATH=$site" "PATH=$TRITON_VENV/bin:$PATH")
}

free_port() {
  local p
  while :; do
    p=$("$TRITON_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [[ " ${triton_used_ports[*]} " == *" $p "* ]] || break
  done
  triton_used_ports+=("$p")
  echo "$p"
}

# config_pbtxt NAME IN OUT NPZ DELAY_MS DELAY_FILE DYNAMIC
config_pbtxt() {
  cat <<PBTXT
name: "$1"
backend: "python"
max_batch_size: 64
input [ { name: "input", data_type: TYPE_FP32, dims: [ $2 ] } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ $3 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
parameters: { key: "weights", value: { string_value: "$4" } }
parameters: { key: "delay_ms", value: { string_value: "$5" } }
parameters: { key: "delay_file", value: { string_value: "$6" } }
PBTXT
  [ "$7" = 1 ] && echo 'dynamic_batching { max_queue_delay_microseconds: 100 }'
  return 0
}

triton_repo() {
  local dir=$1 npz; npz=$(realpath "$2"); shift 2
  local in=784 out=10 slow=1000 delay_file="" dynamic=0
  while [ $# -gt 0 ]; do
    case $1 in
      --in) in=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      --slow-ms) slow=$2; shift 2 ;;
      --delay-file) delay_file=$2; shift 2 ;;
      --dynamic-batching) dynamic=1; shift ;;
      *) echo "triton_repo: unknown option $1" >&2; return 2 ;;
    esac
  done
  local m
  for m in mlp mlp_slow; do mkdir -p "$dir/$m/1"; cp "$triton_root/tests/triton/model.py" "$dir/$m/1/model.py"; done
  config_pbtxt mlp "$in" "$out" "$npz" 0 "$delay_file" "$dynamic" > "$dir/mlp/config.pbtxt"
  config_pbtxt mlp_slow "$in" "$out" "$npz" "$slow" "" "$dynamic" > "$dir/mlp_slow/config.pbtxt"
}

triton_start() {
  local name=$1 repo=$2 http grpc metrics
  http=$(free_port); grpc=$(free_port); metrics=$(free_port)
  TRITON_HTTP[$name]=127.0.0.1:$http
  TRITON_GRPC[$name]=127.0.0.1:$grpc
  TRITON_METRICS[$name]=127.0.0.1:$metrics
  TRITON_START_NS[$name]=$(date +%s%N)
  # Each server gets its own python-backend shared-memory prefix: two servers on one host
  # would otherwise share region names.
  start "$name" "${TRITON_ENV[@]}" "$TRITON_BIN" --model-repository "$repo" \
    --backend-directory "$TRITON_BACKENDS" \
    --backend-config "python,shm-region-prefix-name=parm_${name}_$$_" \
    --http-address 127.0.0.1 --http-port "$http" \
    --grpc-address 127.0.0.1 --grpc-port "$grpc" \
    --metrics-address 127.0.0.1 --metrics-port "$metrics" \
    --allow-gpu-metrics false --exit-on-error true --strict-readiness true --log-verbose 0
}

triton_wait_ready() {
  local name=$1 secs=${2:-120} url="http://${TRITON_HTTP[$1]}/v2/health/ready"
  local deadline=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if curl -sf -o /dev/null --max-time 1 "$url"; then
      TRITON_READY_S[$name]=$(awk -v a="${TRITON_START_NS[$name]}" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
      return 0
    fi
    sleep 0.1
  done
  echo "tritonserver $name not ready at $url after ${secs}s; its log:" >&2
  tail -n 40 "$work/$name.err" "$work/$name.out" >&2
  return 1
}

# Run as a script: one server, until interrupted.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  npz="" repo_args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --npz) npz=$2; shift 2 ;;
      --slow-ms|--in|--out|--delay-file) repo_args+=("$1" "$2"); shift 2 ;;
      --dynamic-batching) repo_args+=("$1"); shift ;;
      -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
      *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
  done
  source "$triton_root/scripts/lib/procs.sh"
  # Ctrl-C / SIGTERM: exit through procs.sh's EXIT trap, which kills the server and waits
  # for it (about 2 s); a second signal meanwhile is ignored.
  trap 'trap "" INT TERM; exit 0' INT TERM
  triton_venv
  triton_prepare
  if [ -z "$npz" ]; then
    npz=$work/mlp.npz
    "$TRITON_VENV/bin/python" "$triton_root/tests/triton/make_mlp.py" "$npz" >&2
  fi
  triton_repo "$work/repo" "$npz" "${repo_args[@]}"
  triton_start t0 "$work/repo"
  triton_wait_ready t0
  echo "triton http ${TRITON_HTTP[t0]} grpc ${TRITON_GRPC[t0]} metrics ${TRITON_METRICS[t0]} repo $work/repo"
  echo "triton ready after ${TRITON_READY_S[t0]} s; log $work/t0.err; Ctrl-C stops it" >&2
  wait "${pids[0]}"
fi
