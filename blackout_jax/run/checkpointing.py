"""Checkpoints of a training run with orbax ``CheckpointManager`` (asynchronous, atomic).

A checkpoint at step ``s`` is the folder ``WORKDIR/checkpoints/<s>/`` with three items:

* ``state``: the train state pytree (parameters, optimiser state, EMA parameters, step, RNG,
  non-finite counters), written by ``ocp.args.StandardSave``;
* ``data_iterator``: the training iterator's position (JSON);
* ``metadata``: facts about the run needed to use the checkpoint on its own (JSON: the data's
  ``max_count``, ``image_shape`` and ``num_train``, the experiment ``config``, the
  ``state_layout``, the ``digests`` of the state's arrays, the non-finite counters, ...).

``state_layout`` is ``"flat"``: parameters, optimiser moments and EMA are vectors, one per
dtype (:mod:`blackout_jax.run.flat_params`). Checkpoints without it (``"tree"``) hold them as
the network's pytrees; they restore through :func:`blackout_jax.run.train_step.from_tree_layout`
and later saves write the flat layout. Checkpoints of earlier releases that also hold a
``config`` item restore as before.

``digests`` (:mod:`blackout_jax.run.digests`) are computed on the device at save time and
checked after every restore: a checkpoint whose arrays decode to other values than were saved
is *damaged*, like one that does not decode. A restore fails in one of two ways, told apart
because they call for opposite actions: a damaged checkpoint (a digest that differs, or any
read or decode error) is reported, set aside by training and the next older one is tried; an
intact checkpoint that does not fit the command (:class:`CheckpointMismatchError`: another
network, other data, another array shape) stops the command with a message naming each
difference and renames nothing.

Saves run in the background; every process calls :meth:`CheckpointStore.save` and orbax
coordinates the hosts (arrays are written by the processes that hold them, JSON items by the
primary host). The state is restored onto the shardings of an abstract target built for the
*current* devices, so a checkpoint written on 8 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from blackout_jax.data import DataShape
from blackout_jax.run import digests, safety

ITEM_NAMES = ("state", "data_iterator", "metadata")
DAMAGED_SUFFIX = ".damaged"
FLAT_LAYOUT, TREE_LAYOUT = "flat", "tree"
_T = TypeVar("_T")


class NoUsableCheckpointError(FileNotFoundError):
    """Every checkpoint of a run folder failed to restore."""


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the command (network, data or array shapes)."""


def state_layout(metadata: dict[str, Any]) -> str:
    """:data:`FLAT_LAYOUT` or, for checkpoints written before it, :data:`TREE_LAYOUT`."""
    return metadata.get("state_layout", TREE_LAYOUT)


def failure_reason(error: BaseException) -> str:
    """One short line saying why a restore failed: the error's type and first line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """The items of one checkpoint: ``state`` on the requested shardings, the rest as JSON."""

    step: int
    state: Any
    data_iterator: dict[str, Any]
    metadata: dict[str, Any]


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shapes and dtypes of ``tree`` on ``sharding``.

    The restore target for :meth:`CheckpointStore.restore`: arrays come back placed by
    ``sharding`` whatever the devices that wrote them.
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def check_metadata(metadata: dict[str, Any], shape: DataShape, workdir: str) -> None:
    """Raise ``ValueError`` when a checkpoint's ``max_count`` or ``image_shape`` differ from
    those of ``shape``, the data's now (the checkpoint was trained on other data)."""
    for name, current in (
        ("max_count", shape.max_count),
        ("image_shape", list(shape.example_shape)),
    ):
        saved = metadata.get(name)
        if saved is not None and saved != current:
            raise CheckpointMismatchError(
                f"the checkpoint in {workdir} was trained with {name}={saved}, but the data now "
                f"has {name}={current}; use a new --workdir for different data"
            )


def remove_unfinished(directory: str | os.PathLike[str], *, patience_seconds: float = 60.0) -> None:
    """Delete the temporary folders of saves that did not finish (``*.orbax-checkpoint-tmp*``).

    When one item of a save fails (a full disk), orbax reports it while the writes of the other
    items are still running in orbax's threads and adding files; those threads are waited for
    first (at most ``patience_seconds`` in all), so that nothing is written after the folder is
    gone.
    """
    deadline = time.monotonic() + patience_seconds
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith(
            "orbax."
        ):
            thread.join(max(0.0, deadline - time.monotonic()))
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


_LISTING_ATTEMPTS = 20


def _retried_while_pruned(read: Callable[[], _T]) -> _T:
    """``read()`` (a listing of the checkpoints), tried again while it raises
    ``FileNotFoundError``: orbax reads every step folder it lists, and a trainer's keep policy
    may remove one in between. Up to :data:`_LISTING_ATTEMPTS` tries, waiting 0.05 s longer
    before each; the last try's error is raised."""
    for attempt in range(_LISTING_ATTEMPTS - 1):
        try:
            return read()
        except FileNotFoundError:
            time.sleep(0.05 * (attempt + 1))
    return read()


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Which orbax handler reads and writes each item."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args_type in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add("state", args_type, ocp.handlers.StandardCheckpointHandler)
    for item in (*ITEM_NAMES[1:], "config"):  # "config": written by earlier releases, unread
        for args_type in (ocp.args.JsonSave, ocp.args.JsonRestore):
            registry.add(item, args_type, ocp.handlers.JsonCheckpointHandler)
    return registry


class CheckpointStore:
    """Periodic, asynchronous checkpoints in ``directory`` with a keep policy.

    Args:
      directory: the checkpoints folder (``WORKDIR/checkpoints``); created on first save.
      checkpoint_every: :meth:`save` without ``force`` writes only at multiples of this.
      keep_checkpoints: how many of the latest checkpoints to keep.
      keep_every: also keep every checkpoint whose step is a multiple of this (0 = off).
      async_save: write in a background thread (the default); :meth:`wait` blocks until done.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        checkpoint_every: int,
        keep_checkpoints: int,
        keep_every: int = 0,
        async_save: bool = True,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0 (0 = off), got {keep_every}")
        policies: list[Any] = [checkpoint_managers.LatestN(n=keep_checkpoints)]
        if keep_every:
            policies.append(checkpoint_managers.EveryNSteps(interval_steps=keep_every))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.FixedIntervalPolicy(checkpoint_every),
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.directory = os.fspath(directory)
        self._manager = _retried_while_pruned(
            lambda: ocp.CheckpointManager(
                os.path.abspath(self.directory), options=options, handler_registry=_registry()
            )
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, increasing."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iterator: dict[str, Any],
        metadata: dict[str, Any],
        force: bool = False,
    ) -> bool:
        """Start writing a checkpoint of step ``step`` (in the background); every process calls.

        Without ``force`` only steps that are multiples of ``checkpoint_every`` are written; with
        ``force`` any step is (e.g. the last step, or on a shutdown signal). A step that is
        already on disk is left as it is.

        Returns:
          Whether a save was started.
        """
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iterator=ocp.args.JsonSave(data_iterator),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=force,
        )

    def restore(self, step: int | None, abstract_state: Any) -> RestoredCheckpoint:
        """Read checkpoint ``step`` (``None`` = the latest) onto ``abstract_state``'s shardings.

        Args:
          step: the step to read, or ``None`` for the latest.
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with the train state's structure
            and the shardings wanted now (see :func:`abstract_like`).

        Raises:
          FileNotFoundError: no checkpoint (or not the requested step) in the directory.
        """
        step = self._existing_step(step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iterator=ocp.args.JsonRestore(),
                metadata=ocp.args.JsonRestore(),
            ),
        )
        return RestoredCheckpoint(
            step=int(step),
            state=restored["state"],
            data_iterator=dict(restored["data_iterator"]),
            metadata=dict(restored["metadata"]),
        )

    def restore_part(self, step: int | None, target: Any) -> tuple[int, Any]:
        """Only the subtree ``target`` of the ``state`` item (e.g. ``{"ema_params": ...}``).

        ``target`` has ``jax.ShapeDtypeStruct`` leaves with the wanted shardings; the other
        arrays of the checkpoint (optimiser state, ...) are neither read nor checked, so
        inference needs memory for the parameters it uses only.

        Returns:
          ``(step, tree)`` with the arrays of ``target``'s structure.

        Raises:
          FileNotFoundError: no checkpoint (or not the requested step) in the directory.
        """
        step = self._existing_step(step)
        restore_args = jax.tree.map(
            lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), target
        )
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree = checkpointer.restore(
                os.path.join(os.path.abspath(self.directory), str(step), "state"),
                args=ocp.args.PyTreeRestore(
                    item=target, restore_args=restore_args, partial_restore=True
                ),
            )
        return step, tree

    def restore_newest_usable(
        self,
        restore: Callable[[int], _T],
        *,
        set_aside: bool,
        warn: Callable[[str], None],
    ) -> _T | None:
        """``restore(step)`` for the newest checkpoint that restores; ``None`` if there is none.

        A checkpoint whose restore raises (a truncated or corrupt array file, arrays that do not
        match their digests, an emptied JSON item, a missing manifest or item folder, an empty
        step folder) is reported by ``warn``
        in one line naming the step and why; with ``set_aside`` its folder is renamed to
        ``<step>.damaged`` (never deleted; by the primary process, the others wait for it) so
        that later runs skip it too. Then the next older one is tried. A checkpoint whose
        folder vanished during the read (a trainer beside this reader pruned it) is no damage:
        the list of checkpoints is read again and the newest one not yet tried is next.

        Raises:
          NoUsableCheckpointError: there are checkpoints and none restores.
          CheckpointMismatchError: the newest checkpoint is intact but does not fit the command
            (raised by ``restore``; nothing is renamed).
          PermissionError: a checkpoint file may not be read (nothing is renamed).
        """
        safety.drop_callbacks_of_abandoned_reads()
        tried: set[int] = set()
        steps = self.all_steps()
        while True:
            untried = [step for step in steps if step not in tried]
            if not untried:
                break
            step = untried[-1]
            tried.add(step)
            folder = os.path.join(self.directory, str(step))
            try:
                return restore(step)
            except Exception as error:  # noqa: BLE001 - orbax, tensorstore, zstd, json, OS errors
                now = self._steps_if_raced(step, folder, tried)
                if now is not None:  # removed meanwhile by a trainer's keep policy
                    steps = now  # it may have written a newer one: try that first
                    continue
                if isinstance(error, (CheckpointMismatchError, PermissionError)):
                    raise
                reason = failure_reason(error)
            if set_aside:
                self._set_aside(folder)
                warn(
                    f"warning: checkpoint {step} in {self.directory} does not restore "
                    f"({reason}); moved it to {folder}{DAMAGED_SUFFIX}"
                )
            else:
                warn(f"warning: checkpoint {step} in {self.directory} does not restore ({reason})")
        if tried:
            raise NoUsableCheckpointError(
                f"none of the checkpoints in {self.directory} (steps {sorted(tried)}) restores; "
                "see the warnings above"
            )
        return None

    def _steps_if_raced(self, step: int, folder: str, tried: set[int]) -> list[int] | None:
        """The checkpoints now, if the failed read of ``step`` raced a trainer's keep policy
        (which removes a checkpoint only after writing a newer one): its folder is gone, or a
        step newer than it and not yet tried exists. ``None`` otherwise (a real failure)."""
        try:
            _retried_while_pruned(self._manager.reload)
        except FileNotFoundError:
            return None
        steps = self.all_steps()
        newer = any(other > step and other not in tried for other in steps)
        return steps if newer or not os.path.isdir(folder) else None

    def check_shapes(self, step: int, target: Any, prefix: str = "") -> None:
        """Raise :class:`CheckpointMismatchError` naming every array of ``target`` (abstract
        arrays; the subtree ``prefix`` of the ``state`` item) that checkpoint ``step`` lacks or
        stores with another shape or dtype: an intact checkpoint of another network."""
        stored = {
            leaf.name: leaf
            for leaf in jax.tree.leaves(self._manager.item_metadata(step)["state"])
            if hasattr(leaf, "name")
        }
        differences = []
        for path, wanted in jax.tree_util.tree_leaves_with_path(target):
            name = ".".join(filter(None, (prefix, digests.path_name(path))))
            found = stored.get(name)
            if found is None:
                differences.append(f"{name}: missing")
            elif tuple(found.shape) != tuple(wanted.shape) or found.dtype != wanted.dtype:
                old = f"{found.dtype}{list(found.shape)}"
                differences.append(f"{name}: {old} -> {wanted.dtype}{list(wanted.shape)}")
        if differences:
            shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} holds arrays of another network "
                f"({len(differences)} differ: {shown}); use a new --workdir for another network"
            )

    def _set_aside(self, folder: str) -> None:
        if jax.process_index() == 0:
            target = folder + DAMAGED_SUFFIX
            index = 1
            while os.path.exists(target):
                index += 1
                target = f"{folder}{DAMAGED_SUFFIX}{index}"
            os.rename(folder, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside {folder}")
        self._manager.reload()

    def _existing_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; "
                f"available steps: {self.all_steps()}"
            )
        return step

    def read_json(self, step: int | None, item: str) -> dict[str, Any]:
        """One JSON item (``"metadata"`` or ``"data_iterator"``) of a checkpoint."""
        if item not in ITEM_NAMES or item == "state":
            raise ValueError(f"item must be one of {ITEM_NAMES[1:]}, got {item!r}")
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        )
        return dict(restored[item])

    def wait(self) -> None:
        """Block until every background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager (also when a save failed)."""
        try:
            self._manager.wait_until_finished()
        finally:
            self._manager.close()
