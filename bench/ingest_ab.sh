#!/usr/bin/env bash
# Ingest speed of two checkouts in one run, alternated so that a busy machine slows both alike:
#   bash bench/ingest_ab.sh OTHER_CHECKOUT [ROUNDS]      (e.g. a `git worktree add /tmp/before COMMIT`)
# Each line: wall and CPU time of bench_ingest.py --model default --clips 400, pinned to core 1.
set -euo pipefail
other=$(cd "$1" && pwd); here=$(cd "$(dirname "$0")/.." && pwd); rounds=${2:-5}
export NELS_ESC50=${NELS_ESC50:-$here/../shared/datasets/esc50}
cp "$here/bench/bench_ingest.py" "$other/bench/bench_ingest.py.ab"
for i in $(seq "$rounds"); do
  (cd "$other" && taskset -c 1 python3 bench/bench_ingest.py.ab --model default --clips 400 | sed 's/^/other /')
  (cd "$here" && taskset -c 1 python3 bench/bench_ingest.py --model default --clips 400 | sed 's/^/this  /')
done
rm -f "$other/bench/bench_ingest.py.ab"
