#!/usr/bin/env bash
# Pretrain on a Cloud TPU pod slice: create it (queued resource), install bertjax on every
# worker, and run the same command on all hosts. Each host reads its own rows of every global
# batch; checkpoints go to a shared path (gs:// or a mounted filesystem).
#
#   PROJECT=my-proj ZONE=us-east5-b TPU=bertjax-v5p ACCEL=v5p-64 RUN=gs://bucket/runs/bert-base \
#     bash launch/tpu_pod.sh bert-base-pretrain train.steps=1000000
set -euo pipefail
: "${PROJECT:?}" "${ZONE:?}" "${TPU:?}" "${ACCEL:=v5p-8}" "${RUN:?}" "${VERSION:=v2-alpha-tpuv5}"
: "${REPO:?set REPO to the git URL of your bertjax checkout}"

if ! gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" --project "$PROJECT" >/dev/null 2>&1; then
  gcloud alpha compute tpus queued-resources create "$TPU-qr" --node-id "$TPU" \
    --zone "$ZONE" --project "$PROJECT" --accelerator-type "$ACCEL" --runtime-version "$VERSION"
  until gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" --project "$PROJECT" \
      --format 'value(state)' 2>/dev/null | grep -q READY; do sleep 30; done
fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --project "$PROJECT" --worker=all --command "$1"
}
ssh_all "test -d bertjax || git clone $REPO bertjax; cd bertjax && git pull -q && \
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -U 'jax[tpu]' -e ."
# One process per host; jax.distributed.initialize() discovers the slice topology.
ssh_all "cd bertjax && . .venv/bin/activate && \
  bertjax pretrain --distributed $* run_dir=$RUN mesh.data=-1 2>&1 | tee -a pretrain.log"
