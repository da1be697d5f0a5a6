#!/usr/bin/env bash
# Runs the whole test suite while the machine is busy with something else: one
# CPU-bound hog per core at the lowest priority (nice 19), as a shared CI
# runner or a developer's build would be. The suite must pass like that, not
# only on an idle machine.
#
#   ./scripts/test-under-load.sh            # 3 runs in a row, stops at the first failure
#   RUNS=1 ./scripts/test-under-load.sh     # one run
#   HOGS=4 ./scripts/test-under-load.sh     # more hogs than cores
#
# Expects ./scripts/test.sh (or install-deps.sh and a build) to have run once.
# Every hog is bounded (timeout) and is killed when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-3}"
hogs="${HOGS:-$(nproc)}"
# a hog outlives no run: 45 minutes is more than one suite takes here
hog_limit="${HOG_LIMIT:-2700}"

cargo build --workspace --all-targets --locked

hog_pids=()
stop_hogs() {
  for pid in "${hog_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  hog_pids=()
}
trap stop_hogs EXIT INT TERM

for run in $(seq 1 "$runs"); do
  for _ in $(seq 1 "$hogs"); do
    # a busy loop in its own shell: pure CPU, no memory, no I/O
    nice -n 19 timeout "$hog_limit" bash -c 'while :; do :; done' &
    hog_pids+=("$!")
  done
  echo "== run $run of $runs with $hogs CPU hogs at nice 19 (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  started=$(date +%s)
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
  else
    cargo test --workspace --locked --no-fail-fast
  fi
  echo "== run $run passed in $(( $(date +%s) - started )) s"
  stop_hogs
done
echo "== $runs runs under load passed"
