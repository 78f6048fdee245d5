#!/bin/sh
# The CPU queue (results/queue.yaml, issue 25), resumed first thing in every working period:
#
#     nohup scripts/cpu-queue.sh > /dev/null 2>&1 &
#
# It works down the queue (`reslab queue run`), resuming the first unfinished run from its
# checkpoint in results/inflight/ (tracked by git: commit it with your work). `reslab queue status`
# shows where each run stands; the test suite and `reslab bench` pause it while they run, and
# `reslab queue pause --while PID` pauses it for any other job. Its output goes to
# results/inflight/queue.log (not tracked).
cd "$(dirname "$0")/.." || exit 1
export RESLAB_DATA=${RESLAB_DATA:-../shared/data}
mkdir -p results/inflight
exec uv run reslab queue run >> results/inflight/queue.log 2>&1
