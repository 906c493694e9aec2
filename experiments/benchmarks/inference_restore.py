"""Time and peak memory of loading a trained model for inference: EMA only vs whole train state.

Writes a checkpoint of the CIFAR-10 reference network (62.7M parameters, Adam state, EMA) once,
then loads it in fresh processes two ways and reports wall time and peak resident memory:

* ``ema_only``: :func:`blackout_jax.run.trained.load_trained_model` (the abstract network as
  the target, only ``ema_params`` read from the checkpoint);
* ``whole_state``: initialise the whole train state (parameters, Adam moments, EMA) and restore
  every array of the checkpoint, then keep the EMA (what inference did before).

    python -m experiments.benchmarks.inference_restore [--config=cifar10] [--folder=/tmp/x]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax

from blackout_jax.data import DataShape
from blackout_jax.run import checkpointing, parallel, train_step, trained, trainer
from blackout_jax.run import config as config_lib

MODES = ("ema_only", "whole_state")


def _setup(config_name: str) -> tuple[config_lib.ExperimentConfig, DataShape]:
    config = config_lib.parse(importlib.import_module(f"configs.{config_name}").get_config())
    example_shape = {"cifar10": (32, 32, 3), "celeba64": (64, 64, 3)}.get(config_name, (8, 8, 1))
    return config, DataShape(example_shape, config.data.max_count, config.model.num_classes)


def write_checkpoint(config_name: str, workdir: str) -> None:
    """A step-1 checkpoint of a freshly initialised train state."""
    config, shape = _setup(config_name)
    replicated = parallel.replicated_sharding(parallel.create_mesh())
    optimizer = train_step.skipping_nonfinite(train_step.make_optimizer(config.training))
    _, state, _ = train_step.init_train_state(config, shape, optimizer, replicated)
    store = trainer.open_checkpoints(workdir, config.training)
    metadata = {
        "max_count": shape.max_count,
        "image_shape": list(shape.example_shape),
        "state_layout": checkpointing.FLAT_LAYOUT,
    }
    store.save(1, state.as_dict(), data_iterator={}, metadata=metadata, force=True)
    store.close()


def load(config_name: str, workdir: str, mode: str) -> dict[str, float]:
    """Load the model one way; wall seconds and peak resident MiB of this process."""
    config, shape = _setup(config_name)
    start = time.perf_counter()
    if mode == "ema_only":
        model = trained.load_trained_model(config, workdir, shape)
        leaves = jax.tree.leaves(model.predict_fn)
    else:
        replicated = parallel.replicated_sharding(parallel.create_mesh())
        optimizer = train_step.skipping_nonfinite(train_step.make_optimizer(config.training))
        _, state, _ = train_step.init_train_state(config, shape, optimizer, replicated)
        store = trainer.open_checkpoints(workdir, config.training)
        target = checkpointing.abstract_like(state.as_dict(), replicated)
        leaves = jax.tree.leaves(store.restore(None, target).state["ema_params"])
        store.close()
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10")
    parser.add_argument("--folder", default="")
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="inference_restore_")
    if args.child:
        print(json.dumps(load(args.config, folder, args.child)))
        return
    if not os.path.isdir(os.path.join(folder, "checkpoints")):
        write_checkpoint(args.config, folder)
    print(f"| load ({args.config}) | seconds | peak resident MiB |\n|---|---|---|", flush=True)
    for mode in MODES:
        command = [sys.executable, "-m", "experiments.benchmarks.inference_restore"]
        command += [f"--config={args.config}", f"--folder={folder}", f"--child={mode}"]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {row['seconds']:.1f} | {row['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
