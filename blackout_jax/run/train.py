"""The training loop: math (losses, bound, sampler) + network + optax + data + orbax.

:func:`train_and_evaluate` trains the network of ``config.model`` on the data of
``config.data`` and leaves in ``workdir``: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``samples/grid_<step>.png`` at each evaluation, ``loss_curve.png``,
``config.json`` and ``metadata.json``. Running it again on the same folder resumes from the
latest checkpoint. It reads like the Flax examples: restore or initialise, then a loop of
:meth:`Trainer.step` / :meth:`Trainer.log` / :meth:`Trainer.evaluate` / :meth:`Trainer.save`
(:mod:`blackout_jax.run.trainer`).

One training step is :func:`blackout_jax.run.train_step.make_train_step`, compiled once over a
device mesh. After ``training.max_consecutive_nonfinite`` skipped updates in a row training
stops with :class:`~blackout_jax.run.safety.NonFiniteTrainingError`, keeping the last
checkpoint written before the run went bad.

Nothing crosses hosts or waits for the device on a step where nothing is logged, evaluated or
saved: the metrics of a log period are fetched together at its end, and a multi-process job
checks for a shutdown signal only at those boundaries (one process alone checks every step).

Evaluation (every ``training.eval_every`` steps and at the end) uses the EMA parameters
(:class:`blackout_jax.run.evaluation.Evaluator`): the held-out loss, the likelihood bound in
bits/dim and a PNG grid of samples. Every evaluation step is a checkpoint step (saved, and the
save finished, before the evaluation starts), so a SIGTERM/SIGINT during an evaluation loses
nothing: one process ends at once, with one line naming the checkpoint kept and exit status
``training.preempted_exit_code``; a multi-process job stops at the next chunk boundary of the
evaluation, where every process agrees, saves and exits with the same status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import jax

from blackout_jax.data import CountDataset
from blackout_jax.run import network, parallel, safety
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.lock import RunFolderInUseError, RunFolderLock
from blackout_jax.run.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train_and_evaluate` did.

    Attributes:
      step: the step training ended at.
      stopped_by_signal: a SIGTERM/SIGINT ended training early (after saving).
      last_eval: the metrics of the last evaluation of this call (empty if none ran).
    """

    step: int
    stopped_by_signal: bool
    last_eval: dict[str, float]


def train_and_evaluate(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    *,
    dataset: CountDataset | None = None,
) -> TrainResult:
    """Train (or resume training) the experiment ``config`` in ``workdir``.

    Every process of a multi-host job calls this with the same arguments (after
    :func:`blackout_jax.run.parallel.initialize_distributed`); process 0 writes the metrics, images
    and JSON files, orbax coordinates the checkpoints.

    Args:
      config: the experiment config (:func:`blackout_jax.run.config.parse`).
      workdir: the run folder; created if missing. A checkpoint in it is resumed.
      dataset: an already loaded :class:`blackout_jax.data.CountDataset` (default: load
        ``config.data``).

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: a checkpoint in ``workdir`` made for other data or settings.
      safety.NonFiniteTrainingError: ``training.max_consecutive_nonfinite`` skipped updates
        in a row.
    """
    if not jax.config.jax_threefry_partitionable:
        raise ValueError(
            "training needs jax_threefry_partitionable=True (JAX's default) so that random "
            "draws do not depend on how the batch is split over devices"
        )
    dataset = dataset if dataset is not None else network.load_data(config)
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with contextlib.ExitStack() as stack:
        _lock_on_every_process(stack, workdir)
        shutdown = stack.enter_context(safety.ShutdownFlag())
        stack.enter_context(safety.disk_full_reported_once())
        trainer = Trainer.restore_or_init(config, workdir, dataset)
        try:
            result = _train_loop(trainer, shutdown)
            trainer.close()  # waits for the last save, whose failure shows only here
        except Exception as error:
            full = safety.no_space_error(error)
            trainer.close(raise_errors=False)
            if full is None:
                raise
            raise safety.DiskFullError(
                f"no space left on the device while writing {full.filename or workdir}; the "
                f"last intact checkpoint is {trainer.intact_checkpoint()}; free space and run "
                "the same command again to resume",
            ) from None
        return result


def _lock_on_every_process(stack: contextlib.ExitStack, workdir: str) -> None:
    """Process 0 takes the run folder's lock (held until ``stack`` closes); when another
    trainer holds it, every process raises the same :class:`RunFolderInUseError`."""
    problem, error = "", None
    if parallel.is_primary():
        try:
            stack.enter_context(RunFolderLock(workdir))
        except RunFolderInUseError as found:
            problem, error = str(found), found
    problem = parallel.primary_text(problem)
    if error is not None:
        raise error
    if problem:
        raise RunFolderInUseError(problem)


def _train_loop(trainer: Trainer, shutdown: safety.ShutdownFlag) -> TrainResult:
    """Step / log / evaluate / checkpoint until ``training.num_steps`` or a shutdown signal."""
    training = trainer.config.training
    step, last_eval, stopped = trainer.start_step, {}, False
    one_process = jax.process_count() == 1
    if step >= training.num_steps:
        trainer.progress.message(
            f"training already reached step {step} (training.num_steps={training.num_steps}); "
            "--mode=evaluate reports its held-out bound and sample metrics"
        )
    if step < training.num_steps:
        trainer.progress.message(
            f"compiling the training step (batch {training.batch_size}, {jax.device_count()} "
            "device(s)); the compilation cache makes this fast on later runs ..."
        )
    while step < training.num_steps:
        trainer.step()
        if step == trainer.start_step:
            shutdown.arm()  # compiled and stepped: from now on a signal saves first
        step += 1
        trainer.progress.update(step)
        if step == trainer.start_step + 1:
            trainer.progress.reset_clock(step)  # steps/s without the first compilation
        last = step == training.num_steps
        at_log = step % training.log_every == 0 or last
        at_eval = step % training.eval_every == 0 or last
        at_checkpoint = step % training.checkpoint_every == 0 or at_eval
        if at_log:
            trainer.check_nonfinite(step, trainer.log(step))
        if at_checkpoint:  # before the evaluation, which a signal may cut short
            trainer.save(step, force=at_eval)
        if at_eval:
            trainer.store.wait()  # saved before an evaluation that may end the process
            interruptible = (
                functools.partial(_ending_at_once, trainer, shutdown, step)
                if one_process
                else functools.partial(shutdown.interrupting, parallel.any_process)
            )
            try:
                last_eval = trainer.evaluate(step, interruptible)
            except safety.Interrupted:
                trainer.progress.message(f"the evaluation at step {step} was interrupted")
                trainer.shut_down(step, shutdown.signal_name)
                stopped = True
                break
        # One process checks its own flag every step; a multi-process job agrees on it
        # (a collective) only where the hosts synchronise anyway.
        if (one_process or at_log or at_checkpoint) and parallel.any_process(shutdown.requested):
            trainer.shut_down(step, shutdown.signal_name)
            stopped = True
            break
    return TrainResult(step=step, stopped_by_signal=stopped, last_eval=last_eval)


def _ending_at_once(
    trainer: Trainer, shutdown: safety.ShutdownFlag, step: int
) -> contextlib.AbstractContextManager:
    """:meth:`~blackout_jax.run.safety.ShutdownFlag.ending_at_once` for the evaluation at
    ``step`` of one process: a signal ends it at once, with one line naming the checkpoint
    kept, and exit status ``training.preempted_exit_code``."""
    kept = trainer.store.latest_step()
    training = trainer.config.training
    then = (
        "--mode=evaluate redoes the evaluation"
        if step >= training.num_steps
        else "the same command resumes training (and evaluates again), --mode=evaluate "
        "evaluates that checkpoint"
    )

    kept_phrase = (
        f"kept the checkpoint of step {kept} in {trainer.workdir}"
        if kept is not None
        else f"no checkpoint in {trainer.workdir} yet (only skipped non-finite updates so far)"
    )

    def message(name: str) -> str:
        interrupted = f"{name} received: the evaluation at step {step} was interrupted"
        return f"{interrupted}; {kept_phrase}; {then}"

    return shutdown.ending_at_once(message, training.preempted_exit_code)
