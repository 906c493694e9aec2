"""One training run's parts: its train state, data stream, checkpoints and reports.

:class:`Trainer` holds them and does one thing each per method: :meth:`Trainer.restore_or_init`
(the newest checkpoint that restores, or a fresh state), :meth:`Trainer.step`,
:meth:`Trainer.log`, :meth:`Trainer.evaluate` (with the EMA parameters,
:class:`blackout_jax.run.evaluation.Evaluator`), :meth:`Trainer.save` and
:meth:`Trainer.shut_down`. The loop that drives them is
:func:`blackout_jax.run.train.train_and_evaluate`.

A checkpoint holds the train state in the flat layout (``run/flat_params``), the data stream's
position, and metadata: the run's facts, the experiment config (the authority when
``config.json`` is lost) and the digests of the arrays (``run/digests``), checked after every
restore (:mod:`blackout_jax.run.checkpointing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Callable

import jax
import numpy as np

from blackout_jax.data import CountDataset
from blackout_jax.run import (
    checkpointing,
    digests,
    evaluation,
    folder,
    parallel,
    reporting,
    safety,
    train_step,
)
from blackout_jax.run.config import ExperimentConfig, TrainingConfig
from blackout_jax.run.progress import ProgressReporter


def open_checkpoints(workdir: str, training: TrainingConfig) -> checkpointing.CheckpointStore:
    """The run's checkpoint store, with the keep policy of ``training``."""
    return checkpointing.CheckpointStore(
        folder.checkpoints_dir(workdir),
        checkpoint_every=training.checkpoint_every,
        keep_checkpoints=training.keep_checkpoints,
        keep_every=training.keep_every,
    )


class Trainer:
    """One training run in ``workdir``: its state, data stream, checkpoints and reports.

    Build it with :meth:`restore_or_init`; :func:`train_and_evaluate` drives it.
    """

    def __init__(self, config: ExperimentConfig, workdir: str, dataset: CountDataset) -> None:
        self.config, self.workdir, self.dataset = config, workdir, dataset
        training = config.training
        self.primary = parallel.is_primary()
        mesh = parallel.create_mesh()
        self.replicated = parallel.replicated_sharding(mesh)
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.optimizer = train_step.skipping_nonfinite(train_step.make_optimizer(training))
        vectors = len(dataset.shape.example_shape) == 1
        self.graphdef, self.state, self.rest = train_step.init_train_state(
            config,
            dataset.shape,
            self.optimizer,
            self.replicated,
            dataset.feature_moments() if vectors else None,
        )
        self.iterator = dataset.train_iterator(
            global_batch_size=training.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.store = open_checkpoints(workdir, training)
        self.metadata = {
            "dataset": str(dataset.name),
            "max_count": int(dataset.max_count),
            "image_shape": [int(d) for d in dataset.image_shape],
            "num_train": int(dataset.num_train),
            "num_devices": jax.device_count(),
            "num_processes": jax.process_count(),
            "state_layout": checkpointing.FLAT_LAYOUT,
        }
        self.start_step = 0
        self.compiled_step = train_step.jit_train_step(
            config, self.graphdef, self.optimizer, self.replicated, self.batch_sharding
        )
        self.evaluator = evaluation.Evaluator(config, dataset, self.graphdef, self.rest)
        self.pending_metrics: list[dict[str, jax.Array]] = []
        self.writer: reporting.MetricsWriter | None = None
        self.progress: ProgressReporter | None = None
        self.longest_at_start = 0

    @classmethod
    def restore_or_init(
        cls, config: ExperimentConfig, workdir: str, dataset: CountDataset
    ) -> Trainer:
        """A fresh run, or the newest checkpoint in ``workdir`` that restores, with its
        data-stream position (damaged ones are set aside; see
        :meth:`~blackout_jax.run.checkpointing.CheckpointStore.restore_newest_usable`).

        Raises:
          CheckpointMismatchError: the newest checkpoint is intact but was trained with other
            settings or data (named field by field); nothing is renamed.
        """
        folder.check_resumable(config, workdir)
        trainer = cls(config, workdir, dataset)
        restored = trainer.store.restore_newest_usable(
            trainer._restore,
            set_aside=True,
            warn=functools.partial(print, file=sys.stderr, flush=True),
        )
        if restored is not None:
            trainer.state = train_step.TrainState(**restored.state, layout=trainer.state.layout)
            trainer.start_step = restored.step
        trainer.longest_at_start = trainer.counters()["longest_nonfinite"]
        trainer._open_reports()
        return trainer

    def _restore(self, step: int) -> checkpointing.RestoredCheckpoint:
        """Checkpoint ``step`` in this run's flat layout, its data-stream position set.

        First the facts that tell an intact checkpoint of another run (settings, data, array
        shapes: :class:`~blackout_jax.run.checkpointing.CheckpointMismatchError`), then the
        arrays, checked against their digests (a checkpoint of the tree layout is migrated)."""
        metadata = self.store.read_json(step, "metadata")
        where = f"checkpoint {step} in {self.store.directory}"
        if isinstance(metadata.get("config"), dict):
            folder.check_same_settings(metadata["config"], self.config, where)
        checkpointing.check_metadata(metadata, self.dataset.shape, self.workdir)
        saved_train = metadata.get("num_train", self.dataset.num_train)
        if saved_train != self.dataset.num_train:
            raise checkpointing.CheckpointMismatchError(
                f"{where} was trained on other data (num_train: {saved_train} -> "
                f"{self.dataset.num_train}); use the data it was trained on, or a new --workdir"
            )
        template = checkpointing.abstract_like(self.state.as_dict(), self.replicated)
        flat = checkpointing.state_layout(metadata) == checkpointing.FLAT_LAYOUT
        layout = self.state.layout
        target = (
            template if flat else train_step.tree_layout_target(template, layout, self.optimizer)
        )
        self.store.check_shapes(step, target)
        restored = self.store.restore(step, target)
        digests.verify_digests(restored.state, metadata, step)
        if not flat:
            state = train_step.from_tree_layout(restored.state, template, layout)
            restored = dataclasses.replace(restored, state=state)
        self.iterator.set_state(restored.data_iterator)
        return restored

    def _open_reports(self) -> None:
        if self.primary:
            os.makedirs(os.path.join(self.workdir, folder.SAMPLES_DIR), exist_ok=True)
            folder.remove_later_grids(self.workdir, self.start_step)
            reporting.write_json(
                os.path.join(self.workdir, folder.CONFIG_FILE), self.config.to_dict()
            )
            reporting.write_json(os.path.join(self.workdir, folder.METADATA_FILE), self.metadata)
            if self.dataset.feature_names is not None:
                reporting.write_json(
                    os.path.join(self.workdir, folder.FEATURES_FILE), self.dataset.features()
                )
            self.writer = reporting.MetricsWriter(self.workdir, resume_step=self.start_step)
        self.progress = ProgressReporter(
            self.config.training.num_steps, self.start_step, enabled=self.primary
        )
        if self.start_step:
            self.progress.message(
                f"resumed from the checkpoint of step {self.start_step} in {self.workdir}"
            )

    def step(self) -> None:
        """One training step on the next global batch (asynchronous: nothing is fetched)."""
        batch = jax.tree.map(
            functools.partial(parallel.global_batch, sharding=self.batch_sharding),
            next(self.iterator),
        )
        self.state, metrics = self.compiled_step(self.state, self.rest, batch)
        self.pending_metrics.append(metrics)

    def counters(self) -> dict[str, int]:
        """The skipped-update counters of the current state (waits for the device)."""
        values = parallel.to_host(
            (
                self.state.consecutive_nonfinite,
                self.state.total_nonfinite,
                self.state.longest_nonfinite,
            )
        )
        names = ("consecutive_nonfinite", "total_nonfinite", "longest_nonfinite")
        return {name: int(value) for name, value in zip(names, values, strict=True)}

    def log(self, step: int) -> dict[str, int]:
        """Fetch the period's metrics, write one row (``loss`` = mean over applied updates);
        returns the counters."""
        fetched = parallel.to_host(self.pending_metrics)
        self.pending_metrics = []
        finite = np.array([m["finite"] for m in fetched]) > 0
        step_losses = np.array([m["loss"] for m in fetched])
        counts = self.counters()
        row = {
            "loss": float(np.mean(step_losses[finite])) if finite.any() else float("nan"),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "learning_rate": float(fetched[-1]["learning_rate"]),
            "skipped_updates": counts["total_nonfinite"],
        }
        row["steps_per_second"] = self.progress.log(step, row)
        if self.writer is not None:
            self.writer.write(step, row, split="train")
        return counts

    def check_nonfinite(self, step: int, counts: dict[str, int]) -> None:
        """:func:`~blackout_jax.run.safety.check_nonfinite` of this run."""
        safety.check_nonfinite(
            counts,
            limit=self.config.training.max_consecutive_nonfinite,
            longest_at_start=self.longest_at_start,
            step=step,
            last_checkpoint=self.last_saved_step,
        )

    def last_saved_step(self) -> int | None:
        """The step of the newest checkpoint once every pending save has finished."""
        self.store.wait()
        return self.store.latest_step()

    def evaluate(
        self,
        step: int,
        interruptible: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """Held-out loss, bound and a sample grid with the EMA parameters; one eval row.

        The computation runs inside ``interruptible()`` (e.g.
        :meth:`~blackout_jax.run.safety.ShutdownFlag.interrupting`), the writes after it."""
        self.progress.message(
            f"evaluating at step {step}: held-out loss and likelihood bound on "
            f"{len(self.evaluator.examples)} examples, {self.config.eval.num_grid_samples} samples "
            f"of {self.config.sampling.num_steps} steps ..."
        )
        ema_params = self.state.network_params(self.state.ema_params)
        with interruptible():
            results = self.evaluator.metrics(ema_params)
            draw_grid = self.config.eval.num_grid_samples > 0
            grid = self.evaluator.samples(ema_params, step) if draw_grid else None
        if grid is not None and self.primary:
            path = folder.grid_image(self.workdir, step)
            reporting.save_sample_grid(
                grid, self.evaluator.max_count, path, columns=self.evaluator.grid_columns
            )
        if not np.isfinite(results["bits_per_dim"]):
            self.progress.message(
                f"warning: the held-out bound at step {step} is not finite "
                f"({results['bits_per_dim']}): the EMA parameters hold non-finite values"
            )
        if step == self.config.training.num_steps:
            self._compare_with_baseline(results)
        if self.writer is not None:
            self.writer.write(step, results, split="eval")
            reporting.plot_loss_curve(
                reporting.read_metrics(self.writer.path),
                os.path.join(self.workdir, folder.LOSS_CURVE_FILE),
            )
        self.progress.message(
            f"eval at step {step}: held-out loss {results['loss']:.4f}, "
            f"bound {results['bits_per_dim']:.4f} bits/dim on {results['num_examples']} examples"
        )
        self.progress.reset_clock(step)
        return results

    def _compare_with_baseline(self, results: dict[str, float]) -> None:
        """Add the baselines of :meth:`Evaluator.baselines` to the final results; warn when the
        model's bound does not beat the best of them (an undertrained model)."""
        results.update(self.evaluator.baselines(self.dataset))
        what, baseline = evaluation.best_baseline(results)
        if results["bits_per_dim"] > baseline:
            self.progress.message(
                f"warning: the bound {results['bits_per_dim']:.3f} bits/dim is above the "
                f"{baseline:.3f} bits/dim of {what} fitted to the training data: "
                "the model is undertrained and its samples will be noise; train longer "
                "(training.num_steps) or see docs/data.md"
            )

    def save(self, step: int, *, force: bool) -> bool:
        """Checkpoint ``step`` unless inside a run of skipped updates; returns whether saved."""
        counts = self.counters()
        if counts["consecutive_nonfinite"]:
            return False
        state = self.state.as_dict()
        return self.store.save(
            step,
            state,
            data_iterator=self.iterator.get_state(),
            metadata={
                **self.metadata,
                **counts,
                "step": step,
                "config": self.config.to_dict(),  # the authority when config.json is lost
                "digests": digests.digests(state),
            },
            force=force,
        )

    def shut_down(self, step: int, signal_name: str) -> None:
        """Save ``step`` (if the state is good) after a shutdown signal, and say so."""
        reason = f"{signal_name or 'shutdown request'} received"
        if self.save(step, force=True) or step in self.store.all_steps():
            self.progress.message(
                f"{reason}: saved the checkpoint of step {step} in {self.workdir}; run the "
                "same command again to resume"
            )
        else:
            self.store.wait()
            self.progress.message(
                f"{reason} at step {step}, in a run of skipped non-finite updates: kept the "
                f"checkpoint of step {self.store.latest_step()} in {self.workdir}"
            )

    def intact_checkpoint(self) -> str:
        """``"step 40 in WORKDIR/checkpoints"`` for the newest finished checkpoint, or a phrase."""
        steps = self.store.all_steps()
        if not steps:
            return f"none (no checkpoint in {self.store.directory})"
        return f"step {steps[-1]} in {self.store.directory}"

    def close(self, *, raise_errors: bool = True) -> None:
        """Finish pending saves; close the reports. With ``raise_errors=False`` (while another
        error is being reported) failures here are swallowed, and a half-written checkpoint
        folder is removed (orbax writes into a temporary folder first)."""
        closers = [self.store.close]
        if self.progress is not None:
            closers.append(self.progress.close)
        if self.writer is not None:
            closers.append(self.writer.close)
        for close in closers:
            try:
                close()
            except Exception:
                if raise_errors:
                    raise
        if not raise_errors and self.primary:
            checkpointing.remove_unfinished(self.store.directory)
