#!/bin/sh
# The CPU queue of results/PENDING.md (issue 18), one run after another with both threads:
# ResNet-56 at the paper's schedule (then re-evaluated), then plain-20 and plain-56 (Fig. 6).
# Each command resumes its run from the newest checkpoint under RUNS (default /work/runs, outside
# the checkout) and records it in the ledger when it finishes; an interrupted command (exit 130)
# ends the queue, and running this script again resumes it (finished steps return at once).
# Start it in the background:
#
#     nohup scripts/cpu-queue.sh > /dev/null 2>&1 &
#
# and pause it while benchmarking: kill -STOP / -CONT the python process (pgrep -f "reslab reproduce").
cd "$(dirname "$0")/.." || exit 1
RUNS=${RUNS:-/work/runs}
mkdir -p "$RUNS"
export RESLAB_DATA=${RESLAB_DATA:-../shared/data}
# ResNet-56 first, unless the ledger holds it already (finished 2026-11-26): then straight to Fig. 6
if [ ! -f results/table6/resnet56-seed0/summary.json ]; then
    uv run reslab reproduce table6 --only resnet56 --runs-dir "$RUNS" --no-progress >> "$RUNS/cpu-queue.log" 2>&1 &&
    # the ledger entry re-evaluated from its weights (the same test error as its summary), and the
    # weights index rebuilt with it: what the next session checks and commits
    uv run reslab eval results/table6/resnet56-seed0 --device cpu >> "$RUNS/cpu-queue-reeval.log" 2>&1 &&
    uv run reslab report --verify >> "$RUNS/cpu-queue-reeval.log" 2>&1 || exit 1
fi
uv run reslab reproduce fig6 --only plain20 plain56 --runs-dir "$RUNS" --no-progress >> "$RUNS/cpu-queue-plain.log" 2>&1
