#!/usr/bin/env bash
# Makes the ONNX test fixtures: `tests/onnx/fixtures.sh OUT_DIR` (see make_fixtures.py for the
# files). A virtual environment with onnx, onnxruntime, scikit-learn, skl2onnx and numpy is
# made once under target/onnx-venv (about 20 s of pip on a fresh machine) and reused.
# Fixtures already in OUT_DIR are kept while make_fixtures.py is unchanged (its hash is in
# OUT_DIR/.done). Prints the venv's python on stdout, last line, for callers that compare
# against onnxruntime (tests/onnx/ort_run.py).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/target/onnx-venv
lock=$root/target/onnx-venv.lock
mkdir -p "$root/target" "$out"
# Test binaries call this concurrently: one makes the venv, the others wait.
exec 9>"$lock"
flock 9
if ! "$venv/bin/python" -c "import onnx, onnxruntime, sklearn, skl2onnx, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check onnx onnxruntime scikit-learn skl2onnx numpy >&2
fi
stamp=$(sha256sum "$root/tests/onnx/make_fixtures.py" | cut -d' ' -f1)
if [ "$(cat "$out/.done" 2>/dev/null)" != "$stamp" ]; then
  "$venv/bin/python" "$root/tests/onnx/make_fixtures.py" "$out" >&2
  echo "$stamp" >"$out/.done"
fi
echo "$venv/bin/python"
