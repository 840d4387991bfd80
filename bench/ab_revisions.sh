#!/usr/bin/env bash
# Run one benchmark under two git revisions, alternating, in one session: the way to show that a change left
# a benchmark's ratios alone (each bench prints ratios against a reference measured in its own run).
#
#   bash bench/ab_revisions.sh REV_A REV_B ROUNDS bench/bench_engine.py --no-compile --repeats 3
#
# Each revision is checked out once into a temporary worktree and run with the current venv's python and that
# worktree's src/ first on the path. Logs: $OUT_DIR (default /tmp/ab_revisions)/<rev>-<round>.log; the lines
# with a ratio (×) of every run are printed at the end, revision by revision.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: bash bench/ab_revisions.sh REV_A REV_B ROUNDS BENCH_SCRIPT [ARGS...]" >&2
    exit 2
fi
rev_a=$1 rev_b=$2 rounds=$3 script=$4
shift 4
top=$(git rev-parse --show-toplevel)
out=${OUT_DIR:-/tmp/ab_revisions}
python=${PYTHON:-$(command -v python)}
mkdir -p "$out"
declare -A tree sha
for rev in "$rev_a" "$rev_b"; do
    sha[$rev]=$(git -C "$top" rev-parse --short "$rev")  # once: HEAD may move while the rounds run
    tree[$rev]="$out/tree-${sha[$rev]}"
    [ -d "${tree[$rev]}" ] || git -C "$top" worktree add -q --detach "${tree[$rev]}" "${sha[$rev]}"
done
for round in $(seq 1 "$rounds"); do
    for rev in "$rev_a" "$rev_b"; do
        log="$out/${sha[$rev]}-$round.log"
        echo "round $round: $rev ($script $*) -> $log" >&2
        (cd "${tree[$rev]}" && PYTHONPATH=src "$python" "$script" "$@") > "$log" 2>&1
    done
done
for rev in "$rev_a" "$rev_b"; do
    for round in $(seq 1 "$rounds"); do
        echo "== $rev (${sha[$rev]}), round $round"
        grep -E "×|x " "$out/${sha[$rev]}-$round.log" || tail -5 "$out/${sha[$rev]}-$round.log"
    done
done
