#!/usr/bin/env bash
# Re-run a preemptible pretraining job until it finishes: bertjax saves on SIGTERM and resumes
# from the latest checkpoint in run_dir automatically, so a retry loop is all a spot VM needs.
#   bash launch/babysit.sh bert-demo run_dir=runs/bert-demo
set -uo pipefail
for attempt in $(seq 1 "${RETRIES:-100}"); do
  bertjax pretrain "$@" && exit 0
  echo "attempt $attempt failed ($?); retrying in ${SLEEP:-60}s" >&2
  sleep "${SLEEP:-60}"
done
exit 1
