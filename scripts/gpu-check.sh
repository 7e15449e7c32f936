#!/usr/bin/env bash
# The GPU check of issue 18, in two halves, so that the GPU machine's short time is spent
# measuring, not building or debugging.
#
#   scripts/gpu-check.sh prepare [BUNDLE]
#       Here (any machine with Rust): builds `parm --features cuda` and `oip-load` (release),
#       strips them, and puts them in BUNDLE (default target/gpu-bundle) with a reduced
#       Fashion-MNIST (20,000 training and 5,000 test images, from data/fashion-mnist) and an
#       MLP deployed model and its k = 2 parity model trained on it (CPU, 2 epochs: quality is
#       not what is measured). Fails if the bundle is over 60 MiB (the device machine takes
#       64 MiB of carried files in all).
#
#   DEVICE=cuda scripts/gpu-check.sh run [BUNDLE]
#       On the GPU machine, from the repository root, with the bundle carried over. Writes
#       every result as JSON under $OUT (default ./gpu-check-out), and gpu-check.json, the
#       summary. Measures:
#       (a) ResNet-18 (CIFAR variant, width 64, initialised, not trained) and the MLP,
#           `parm infer` on cuda and on cpu over the same test images: time and the largest
#           absolute difference of the logits;
#       (b) `parm worker --device cuda` (and cpu, for the ratio) under `oip-load`: per-query
#           latency (one request at a time) and throughput with requests of 1, 8, 64 queries;
#       (c) parity-model training (ParM's recipe, MLP, k = 2): `parm train-parity --device
#           cuda` steps/s against bench/torch/parity_train.py (PyTorch, same recipe, same
#           targets) on the same GPU;
#       (d) the coded path with every worker on the GPU (PARM_DEVICE=cuda), deployed instance
#           0 slowed by 20 ms: p50 / p99.9 of parm (k = 2) against Equal-Resources.
#       Each step has a time limit; a failed step is recorded with its error and the others
#       still run. STEPS="a c" runs only those (b needs a's ResNet-18).
#
#   DEVICE=cpu scripts/gpu-check.sh run [BUNDLE]
#       The rehearsal: the same steps on the CPU, with small sizes, to check that the script
#       and the bundle work end to end (no GPU figures).
#
# NVRTC: cubecl compiles its kernels at run time with NVRTC, which parm loads as
# libnvrtc.so (cudarc, pinned to the CUDA 12.8 API). On the GPU machine it comes from the
# Python environment's nvidia-cuda-nvrtc package (installed with PyTorch); `run` finds its lib/
# directory and puts it on LD_LIBRARY_PATH, with a libnvrtc.so link when only a versioned file
# is there. NVRTC_DIR=... overrides the search.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
bundle=${2:-target/gpu-bundle}

die() { echo "gpu-check: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------- prepare

# reduce_idx SRC DST N: the first N items of an IDX file (.gz), header count rewritten.
reduce_idx() {
  python3 - "$1" "$2" "$3" <<'PY'
import gzip, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = gzip.open(src, "rb").read()
dims = data[3]
shape = list(struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims]))
item = 1
for d in shape[1:]:
    item *= d
n = min(n, shape[0])
shape[0] = n
head = data[:4] + struct.pack(">" + "I" * dims, *shape)
body = data[4 + 4 * dims: 4 + 4 * dims + n * item]
with gzip.open(dst, "wb", compresslevel=9) as f:
    f.write(head + body)
PY
}

prepare() {
  local target=${CARGO_TARGET_DIR:-target}
  [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ] || die "data/fashion-mnist/*.gz missing: run \`parm data\` first"
  cargo build --release --features cuda -p parm --bin parm
  cargo build --release -p parm-bench --bin oip-load
  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/data/fashion-mnist" "$bundle/models/fashion-mnist"
  # Stripped, the cuda build is still about 92 MiB (cubecl's kernels), over the device
  # machine's 64 MiB carry limit on its own: carried gzipped (about 26 MiB), unpacked by `run`.
  local b
  for b in parm oip-load; do
    strip -o "$bundle/bin/$b" "$target/release/$b"
    gzip -6 "$bundle/bin/$b"
  done
  local src=data/fashion-mnist dst=$bundle/data/fashion-mnist
  reduce_idx "$src/train-images-idx3-ubyte.gz" "$dst/train-images-idx3-ubyte.gz" 20000
  reduce_idx "$src/train-labels-idx1-ubyte.gz" "$dst/train-labels-idx1-ubyte.gz" 20000
  reduce_idx "$src/t10k-images-idx3-ubyte.gz" "$dst/t10k-images-idx3-ubyte.gz" 5000
  reduce_idx "$src/t10k-labels-idx1-ubyte.gz" "$dst/t10k-labels-idx1-ubyte.gz" 5000
  local p=("--data-dir" "$bundle/data" "--models-dir" "$bundle/models")
  "$target/release/parm" train "${p[@]}" --epochs 2
  "$target/release/parm" train-parity "${p[@]}" --epochs 2 --k 2
  rm -rf "$bundle/models/fashion-mnist/cache" "$bundle/models/fashion-mnist/"*.ckpt
  local mib; mib=$(du -sm "$bundle" | cut -f1)
  du -sh "$bundle"/bin/* "$bundle/data" "$bundle/models"
  [ "$mib" -le 60 ] || die "$bundle is $mib MiB; the device machine carries 64 MiB in all"
  echo "gpu-check: $bundle ready ($mib MiB); carry it and run: DEVICE=cuda scripts/gpu-check.sh run $bundle"
}

# ----------------------------------------------------------------------------------- run

# find_nvrtc: prints the directory holding libnvrtc.so* (the Python package's lib/).
find_nvrtc() {
  if [ -n "${NVRTC_DIR:-}" ]; then echo "$NVRTC_DIR"; return; fi
  python3 - <<'PY' 2>/dev/null || true
import glob, os
roots = []
try:
    import nvidia.cuda_nvrtc as m
    roots += [os.path.join(p, "lib") for p in m.__path__]
except Exception:
    pass
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
for r in roots:
    hits = sorted(glob.glob(os.path.join(r, "**", "libnvrtc.so*"), recursive=True))
    hits = [h for h in hits if "builtins" not in os.path.basename(h)]
    if hits:
        print(os.path.dirname(hits[0]))
        break
PY
}

# setup_cuda: LD_LIBRARY_PATH with NVRTC (and a libnvrtc.so link when only libnvrtc.so.N is
# there: parm asks for libnvrtc.so first), the GPU's name and driver into $out/gpu.json.
setup_cuda() {
  local dir; dir=$(find_nvrtc)
  [ -n "$dir" ] || die "no libnvrtc.so* found (pip package nvidia-cuda-nvrtc); set NVRTC_DIR"
  local shim=$scratch/nvrtc-shim lib
  mkdir -p "$shim"
  lib=$(ls "$dir"/libnvrtc.so* | grep -v builtins | head -1)
  ln -sf "$lib" "$shim/libnvrtc.so"
  export LD_LIBRARY_PATH="$shim:$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu-check: NVRTC from $lib"
  {
    printf '{"nvrtc": "%s", "nvidia_smi": ' "$lib"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
      | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))' || echo '[]'
    printf '}\n'
  } > "$out/gpu.json"
}

# step NAME SECONDS FUNCTION: runs FUNCTION (in a fresh copy of this script, so that
# `timeout` can stop it) with a time limit, logs to $out/NAME.log; a failure is recorded in
# $out/NAME.error.json and the run goes on.
step() {
  local name=$1 limit=$2 fn=$3
  echo "gpu-check: $name ..."
  rm -f "$out/$name.error.json" # from an earlier run into the same $OUT
  local t0=$SECONDS
  if timeout "$limit" "$self" __step "$fn" "$bundle" > "$out/$name.log" 2>&1; then
    echo "gpu-check: $name done in $((SECONDS - t0)) s"
  else
    local rc=$?
    echo "gpu-check: $name FAILED (exit $rc after $((SECONDS - t0)) s); tail of $out/$name.log:"
    tail -5 "$out/$name.log"
    python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "exit": int(sys.argv[2]), "log_tail": open(sys.argv[3], errors="replace").read()[-2000:]}))' \
      "$name" "$rc" "$out/$name.log" > "$out/$name.error.json"
  fi
}

# (a) one model on cpu and on $DEVICE, same queries: timing lines and the outputs' difference.
infer_pair() {
  local model=$1 tag=$2 n=$3 batch=$4
  local dev
  for dev in cpu "$DEVICE"; do
    "$parm" infer "${paths[@]}" --model "$model" --n "$n" --batch "$batch" --repeat "$repeat" \
      --device "$dev" --out "$scratch/$tag-$dev.f32" > "$out/a-$tag-$dev.json"
  done
  python3 - "$scratch/$tag-cpu.f32" "$scratch/$tag-$DEVICE.f32" "$tag" > "$out/a-$tag-diff.json" <<'PY'
import array, json, sys
a, b = array.array("f"), array.array("f")
a.frombytes(open(sys.argv[1], "rb").read()); b.frombytes(open(sys.argv[2], "rb").read())
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
diff = max(abs(x - y) for x, y in zip(a, b))
scale = max(abs(x) for x in a)
print(json.dumps({"model": sys.argv[3], "values": len(a), "max_abs_diff": diff, "max_abs_cpu": scale}))
PY
}

step_a() {
  # An initialised ResNet-18 is enough to compare devices and time them (0 epochs: nothing
  # trained, the test pass only); trained weights would be 45 MB to carry.
  "$parm" train "${paths[@]}" --arch resnet18 --width "$resnet_width" --epochs 0 --name resnet18 --force --device "$DEVICE"
  infer_pair "$models/resnet18.bpk" resnet18 "$a_n_resnet" 64
  infer_pair "$models/deployed.bpk" mlp "$a_n_mlp" 64
}

# load_worker DEV MODEL TAG: a worker on DEV (dynamic batching up to 64), oip-load at
# request batches 1, 8, 64 (closed loop) and one request at a time for per-query latency.
load_worker() {
  local dev=$1 model=$2 tag=$3 dim=784
  "$parm" worker --model "$model" --name m --listen 127.0.0.1:0 --device "$dev" \
    --max-batch 64 --max-queue-delay-us 200 > "$scratch/w-$tag.out" 2> "$scratch/w-$tag.err" &
  local pid=$!
  echo "$pid" >> "$scratch/worker-pids" # killed at the end even if a time limit stops this step
  local addr=""
  for _ in $(seq 600); do
    addr=$(sed -n 's/^listening on //p' "$scratch/w-$tag.out" 2>/dev/null | head -1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$scratch/w-$tag.err" >&2; die "worker $tag exited"; }
    sleep 0.1
  done
  [ -n "$addr" ] || { kill "$pid"; die "worker $tag printed no address"; }
  local load=("$oip_load" --target "$addr" --model m --dim "$dim" --duration "$b_seconds" --warmup "$b_warmup")
  "${load[@]}" --concurrency 1 --batch 1 > "$out/b-$tag-latency.json"
  local b
  for b in 1 8 64; do
    "${load[@]}" --concurrency 8 --batch "$b" > "$out/b-$tag-batch$b.json"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

step_b() {
  [ -f "$models/resnet18.bpk" ] || die "step a made no resnet18.bpk"
  load_worker "$DEVICE" "$models/resnet18.bpk" "resnet18-$DEVICE"
  load_worker "$DEVICE" "$models/deployed.bpk" "mlp-$DEVICE"
  if [ "$DEVICE" != cpu ]; then
    load_worker cpu "$models/resnet18.bpk" resnet18-cpu
    load_worker cpu "$models/deployed.bpk" mlp-cpu
  fi
}

# steps_per_s SHORT.json LONG.json NAME: steps/s of the LONG run beyond the SHORT one, so that
# what both pay once (CUDA start-up, kernel compilation, autotune) cancels out.
steps_per_s() {
  python3 - "$@" <<'PY'
import json, sys
def last(path):  # a metadata file, or a command's output whose last line is JSON
    text = open(path).read()
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.strip().splitlines()[-1])
a, b = last(sys.argv[1]), last(sys.argv[2])
sa, sb = a.get("steps"), b.get("steps")
ta, tb = a.get("train_seconds", a.get("seconds")), b.get("train_seconds", b.get("seconds"))
print(json.dumps({"trainer": sys.argv[3], "short": {"steps": sa, "seconds": ta}, "long": {"steps": sb, "seconds": tb},
                  "steps_per_s": (sb - sa) / (tb - ta) if tb > ta else None,
                  "steps_per_s_including_start_up": sb / tb}))
PY
}

step_c() {
  local e
  for e in "$c_epochs_short" "$c_epochs"; do
    "$parm" train-parity "${paths[@]}" --k 2 --recipe parm-paper --epochs "$e" \
      --name "parity-speed-$e" --force --device "$DEVICE"
    cp "$models/parity-speed-$e.json" "$scratch/c-parm-$e.json"
  done
  steps_per_s "$scratch/c-parm-$c_epochs_short.json" "$scratch/c-parm-$c_epochs.json" "parm-$DEVICE" > "$out/c-parm-$DEVICE.json"
  if ! python3 -c 'import torch' 2>/dev/null; then
    echo '{"skipped": "PyTorch is not importable by python3 here"}' > "$out/c-torch-$DEVICE.json"
    return
  fi
  local logits; logits=$(ls "$models"/cache/logits-*-train.f32 | head -1)
  for e in "$c_epochs_short" "$c_epochs"; do
    python3 bench/torch/parity_train.py --logits "$logits" --images "$data/fashion-mnist/train-images-idx3-ubyte.gz" \
      --k 2 --epochs "$e" --threads "$(nproc)" --device "$DEVICE" > "$scratch/c-torch-$e.json"
  done
  steps_per_s "$scratch/c-torch-$c_epochs_short.json" "$scratch/c-torch-$c_epochs.json" "pytorch-$DEVICE" > "$out/c-torch-$DEVICE.json"
}

step_d() {
  cat > "$scratch/gpu-one-slow.toml" <<EOF
# Written by scripts/gpu-check.sh: deployed instance 0 slowed by 20 ms per request.
name = "gpu-one-slow-$DEVICE"
dataset = "fashion-mnist"
queries = $d_queries
warmup = $d_warmup
rates = [$d_rate]
trials = 1
instances = 4
modes = ["equal-resources-k2", "parm-k2"]
seed = 1

[[faults]]
kind = "delay"
instance = 0
delay_ms = 20.0
EOF
  PARM_DEVICE=$DEVICE "$parm" bench "${paths[@]}" --scenario "$scratch/gpu-one-slow.toml" --out "$scratch/bench" --parity-epochs 2
  cp "$scratch/bench/tail.json" "$out/d-tail.json"
}

summary() {
  python3 - "$out" "$DEVICE" > "$out/gpu-check.json" <<'PY'
import glob, json, os, sys
out, device = sys.argv[1], sys.argv[2]
def load(path):
    text = open(path).read()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:  # a command's output: its JSON is the last line
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        return {"unreadable": str(e), "text": text[-500:]}
res = {"device": device, "results": {}}
for p in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(p)[:-5]
    if name != "gpu-check":
        res["results"][name] = load(p)
res["failed_steps"] = sorted(k[:-6] for k in res["results"] if k.endswith(".error"))
print(json.dumps(res, indent=1))
PY
  echo "gpu-check: summary in $out/gpu-check.json (failed steps: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed_steps"])' "$out/gpu-check.json"))"
}

# settings: the paths and the sizes of DEVICE's run (from the exported DEVICE, out, scratch).
settings() {
  parm=$scratch/bin/parm
  oip_load=$scratch/bin/oip-load
  data=$bundle/data
  models=$scratch/models/fashion-mnist
  paths=(--data-dir "$data" --models-dir "$scratch/models")
  case "$DEVICE" in
    cpu)  # rehearsal sizes
      resnet_width=8 a_n_resnet=200 a_n_mlp=1000 repeat=1
      b_seconds=2 b_warmup=1 c_epochs_short=1 c_epochs=2 d_queries=1300 d_warmup=100 d_rate=100 ;;
    cuda*)
      # d: 1,500 warm-up queries (5 s) so that every worker has compiled its kernels before
      # timing starts; 10,000 timed, for a p99.9 resting on 10 queries.
      resnet_width=64 a_n_resnet=1024 a_n_mlp=5000 repeat=2
      b_seconds=5 b_warmup=2 c_epochs_short=2 c_epochs=12 d_queries=11500 d_warmup=1500 d_rate=300 ;;
    *) die "DEVICE must be cpu, cuda or cuda:N, not $DEVICE" ;;
  esac
}

# kill_workers: the workers step b started (by their ids), if a time limit cut it short.
kill_workers() {
  local pid
  for pid in $(cat "$scratch/worker-pids" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
}

run() {
  export DEVICE=${DEVICE:-cuda}
  out=${OUT:-gpu-check-out}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  [ -f "$bundle/bin/parm.gz" ] || die "$bundle/bin/parm.gz missing: run \`scripts/gpu-check.sh prepare\` first"
  scratch=$(mktemp -d)
  export out scratch
  trap 'kill_workers; rm -rf "$scratch"' EXIT
  # Models are written to (resnet18, parity-speed, caches): work on a copy of the bundle's.
  cp -r "$bundle/models" "$scratch/models"
  mkdir -p "$scratch/bin"
  local b
  for b in parm oip-load; do
    [ -f "$bundle/bin/$b.gz" ] || continue # step b says so if oip-load is missing
    gzip -dc "$bundle/bin/$b.gz" > "$scratch/bin/$b"
    chmod +x "$scratch/bin/$b"
  done
  settings
  [ "$DEVICE" = cpu ] || setup_cuda
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
  local t0=$SECONDS
  local steps=" ${STEPS:-a b c d} "
  [[ $steps == *" a "* ]] && step a-inference 150 step_a
  [[ $steps == *" b "* ]] && { step b-worker 240 step_b; kill_workers; }
  [[ $steps == *" c "* ]] && step c-parity-training 200 step_c
  [[ $steps == *" d "* ]] && step d-coded-path 200 step_d
  echo "gpu-check: all steps in $((SECONDS - t0)) s"
  summary
}

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
case "$mode" in
  prepare) prepare ;;
  run) run ;;
  __step) bundle=$3; settings; "$2" ;; # internal: one step of `run` (see `step`)
  *) die "usage: scripts/gpu-check.sh prepare [BUNDLE] | DEVICE=cuda|cpu scripts/gpu-check.sh run [BUNDLE]" ;;
esac
