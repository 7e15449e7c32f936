# Background processes for the benchmark and integration scripts (sourced, not run):
# a scratch directory $work, the started processes killed (after SIGCONT, in case a test
# stopped one) and $work removed on exit, `start` and `addr`.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, stdout/stderr to $work/NAME.{out,err}.
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
}

# addr NAME PREFIX: waits (30 s) for the line "PREFIX ADDR" in NAME's stdout and prints ADDR.
addr() {
  for _ in $(seq 300); do
    local line; line=$(grep -m1 "^$2 " "$work/$1.out" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "${line#"$2 "}"; return; fi
    sleep 0.1
  done
  echo "$1 did not print '$2 ADDR'; its stderr:" >&2; cat "$work/$1.err" >&2; exit 1
}
