#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, one after the other, and prints per target
# the executions, the corpus size and the findings (crash / leak / timeout / OOM artifacts).
#
#   fuzz/run.sh                 # 60 s per target
#   SECONDS_PER_TARGET=300 fuzz/run.sh http_infer grpc_infer
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds into
# fuzz/target (its own workspace, not the main one). The corpus grows in fuzz/corpus/TARGET
# (seeded from fuzz/seeds/TARGET); findings land in fuzz/artifacts/TARGET. A finding should
# be fixed and its input copied into the crate's tests/fuzz-regressions/TARGET/ so that
# `cargo test --workspace` replays it. Not run in CI (too heavy); the regression
# inputs are.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${SECONDS_PER_TARGET:-60}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
SANITIZER="${FUZZ_SANITIZER:-address}"
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(http_infer grpc_infer idx weights)

: >build.log
for t in "${TARGETS[@]}"; do
  nice cargo "+$TOOLCHAIN" fuzz build --release --sanitizer "$SANITIZER" "$t" >>build.log 2>&1 \
    || { echo "building $t failed, see fuzz/build.log"; tail -20 build.log; exit 1; }
done

printf '%-12s %10s %12s %8s %8s %s\n' target seconds executions exec/s corpus findings
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  [ -d "seeds/$t" ] && cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
  before=$(ls "artifacts/$t" | wc -l)
  log="artifacts/$t.log"
  # -max_total_time bounds the run; -rss_limit_mb and -timeout turn memory blow-ups and hangs
  # into findings; the extra corpus dirs are read-only seeds.
  set +e
  nice cargo "+$TOOLCHAIN" fuzz run --release --sanitizer "$SANITIZER" "$t" "corpus/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(ls "corpus/$t" | wc -l)
  after=$(ls "artifacts/$t" | wc -l)
  found=$((after - before))
  what="none"
  if [ "$found" -gt 0 ] || [ "$rc" -ne 0 ]; then
    what="$found new ($(ls -t "artifacts/$t" | head -3 | tr '\n' ' ')), exit $rc; see fuzz/$log"
    status=1
  fi
  printf '%-12s %10s %12s %8s %8s %s\n' "$t" "$SECS" "${execs:-?}" "${rate:-?}" "$corpus" "$what"
done
exit $status
