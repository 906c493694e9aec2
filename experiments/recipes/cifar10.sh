#!/usr/bin/env bash
# The paper's CIFAR-10 run end to end on one machine (one or more GPUs): train, draw the
# config's samples (50k, 1000 steps, the reference sampler), report the likelihood bound and
# FID/IS/KID against the training set. CONFIG=configs/celeba64.py or configs/binarized_mnist.py
# runs the other reference experiments (binarized MNIST gets the bound only).
#
#   DATA_DIR=/data/tfds WORKDIR=runs/cifar10 bash experiments/recipes/cifar10.sh [--config.x=y ...]
#
# Arguments are passed to every command after the recipe's own (later flags win), e.g.
# --config.training.num_steps=... or --config.sampling.method=tau_leaping.
# Needs: a TFDS data_dir with cifar10 prepared (docs/data.md), the `fid` extra
# (pip install -e ".[fid]") and the Inception weights file (docs/metrics.md).
# Every step resumes where it stopped when the script is run again.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the TFDS data_dir holding cifar10}"
WORKDIR=${WORKDIR:-runs/cifar10}
CONFIG=${CONFIG:-configs/cifar10.py}
COMMON=(--config="$CONFIG" --workdir="$WORKDIR" --config.data.data_dir="$DATA_DIR")

python -m blackout_jax.main "${COMMON[@]}" --mode=train "$@"
python -m blackout_jax.main "${COMMON[@]}" --mode=sample "$@"
python -m blackout_jax.main "${COMMON[@]}" --mode=evaluate "$@"
echo "metrics: $WORKDIR/eval/"
