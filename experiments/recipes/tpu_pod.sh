#!/usr/bin/env bash
# The same CIFAR-10 run on every host of a TPU pod slice. JAX finds the other hosts by itself on
# Cloud TPU (jax.distributed.initialize without arguments); each host reads its own rows of
# every global batch, and orbax writes one checkpoint for the whole slice.
#
# From a machine with the gcloud CLI:
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
#     "cd blackout_jax && DATA_DIR=/mnt/shared/tfds WORKDIR=/mnt/shared/runs/cifar10 \
#      bash experiments/recipes/tpu_pod.sh"
#
# Arguments are passed to every command after the recipe's own (later flags win).
# DATA_DIR and WORKDIR must be the same shared file system on every host (e.g. a Filestore or
# NFS mount); the run folder is written with ordinary file operations, so gs:// paths are not
# supported.
# training.batch_size must be a multiple of the number of chips.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to a TFDS data_dir every host can read}"
: "${WORKDIR:?set WORKDIR to a run folder every host can write}"
pip install -q -e ".[fid]" "jax[tpu]"
COMMON=(--config=configs/cifar10.py --workdir="$WORKDIR" --config.data.data_dir="$DATA_DIR")
python -m blackout_jax.main "${COMMON[@]}" --mode=train "$@"
python -m blackout_jax.main "${COMMON[@]}" --mode=sample "$@"
python -m blackout_jax.main "${COMMON[@]}" --mode=evaluate "$@"
