#!/usr/bin/env bash
# Validates deploy/kubernetes offline, as CI can (no cluster here):
# 1. every object against the Kubernetes API schemas, strictly (unknown fields refused), for
#    the oldest and newest Kubernetes versions checked, with PyPI's kubernetes-validate (it
#    ships the schemas; installed in target/k8s-venv);
# 2. the ConfigMap's parm.toml against parm itself: `parm serve --config` must accept it,
#    listen, and report the model unavailable while its DNS-named instances do not resolve;
# 3. every `parm` command line in the manifests parses (clap, via `--help` after the args
#    would not check them, so each is run with a bad extra flag and must fail on that flag only).
set -euo pipefail
cd "$(dirname "$0")/../.."
manifests=(deploy/kubernetes/config.yaml deploy/kubernetes/models.yaml deploy/kubernetes/workers.yaml deploy/kubernetes/frontend.yaml)
venv=target/k8s-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 pyyaml==6.0.3
fi
for v in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"
done
echo "kubernetes: ${#manifests[@]} files valid against Kubernetes 1.30 and 1.37 (strict)"

# PARM: another parm binary (CI's is the tests' build).
parm=${PARM:-target/release/parm}
[ -x "$parm" ] || cargo build --release -q -p parm
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$venv/bin/python" - "$work" deploy/kubernetes/config.yaml deploy/kubernetes/workers.yaml deploy/kubernetes/frontend.yaml <<'PY'
import sys, yaml, json
work, config, *deployments = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(config)) if d]
open(f"{work}/parm.toml", "w").write(docs[0]["data"]["parm.toml"])
args = []
for f in deployments:
    for d in yaml.safe_load_all(open(f)):
        if d and d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                args.append(c["args"])
json.dump(args, open(f"{work}/args.json", "w"))
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$parm" serve --config "$work/parm.toml" --listen "127.0.0.1:$port" --grpc-listen off > "$work/serve.out" 2> "$work/serve.err" &
for _ in $(seq 100); do
  code=$(curl -s -o "$work/ready.json" -w '%{http_code}' "http://127.0.0.1:$port/v2/health/ready" || true)
  [ "$code" = 000 ] || break
  sleep 0.1
done
[ "$code" = 503 ] || { echo "parm serve on the ConfigMap's parm.toml: ready answered '$code', want 503; stderr:" >&2; cat "$work/serve.err" >&2; exit 1; }
curl -s -X POST "http://127.0.0.1:$port/v2/repository/index" > "$work/index.json"
python3 - "$work/index.json" <<'PY'
import json, sys
index = json.load(open(sys.argv[1]))
assert [m["name"] for m in index] == ["fashion-mnist"], index
assert index[0]["state"] == "UNAVAILABLE" and "dns://parm-deployed:9001" in index[0]["reason"], index
PY
echo "kubernetes: parm serve accepts the ConfigMap's parm.toml and waits for its instances"

# Each command line parses: with an unknown flag appended, clap must complain about that flag
# and nothing else.
python3 - "$work/args.json" "$parm" <<'PY'
import json, subprocess, sys
for args in json.load(open(sys.argv[1])):
    r = subprocess.run([sys.argv[2], *args, "--no-such-flag"], capture_output=True, text=True, timeout=30)
    first = r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""
    assert r.returncode != 0 and "'--no-such-flag'" in first, (args, r.stderr)
print(f"kubernetes: {len(json.load(open(sys.argv[1])))} parm command lines parse")
PY
