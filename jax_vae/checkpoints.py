"""Orbax checkpoints of a training run: state (params, optimizer, key, epoch) and history.

A :class:`Checkpointer` is handed to :func:`jax_vae.train.train`, which saves
every ``every`` epochs and at the end, and resumes from the latest complete
checkpoint when there is one. Orbax writes each checkpoint to a temporary
folder and renames it when complete, so a process killed mid-save leaves the
previous checkpoint readable.

Saves are asynchronous by default, by Orbax itself: :meth:`Checkpointer.save`
copies the state to host memory (the next epoch may reuse the device buffers)
and Orbax writes it in the background while training goes on. Everything that
reads the folder waits for pending writes first; call :meth:`Checkpointer.wait`
(or :meth:`Checkpointer.close`) before relying on the files.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_vae import errors

CheckpointError = errors.CheckpointError


def _state_tree(state) -> dict[str, Any]:
    # Typed PRNG keys are stored as their raw key data.
    return {
        "params": state.params,
        "opt_state": state.opt_state,
        "key": jax.random.key_data(state.key),
        "epoch": state.epoch,
    }


def _abstract(tree) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _shape_differences(saved: Any, expected: Any) -> list[str]:
    """Parameter paths whose shapes differ between checkpoint metadata and the model."""
    saved_flat = dict(jax.tree_util.tree_flatten_with_path(saved)[0])
    differences = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if path not in saved_flat:
            differences.append(f"{name} is missing from the checkpoint")
        elif tuple(getattr(saved_flat[path], "shape", ())) != tuple(leaf.shape):
            differences.append(
                f"{name}: checkpoint {tuple(saved_flat[path].shape)}, model {tuple(leaf.shape)}"
            )
    return differences


class Checkpointer:
    """Saves and restores training checkpoints in one folder.

    Args:
      directory: The checkpoint folder (created when missing).
      every: Save every this many epochs (the last epoch is always saved).
      keep: How many checkpoints to keep; older ones are deleted.
      asynchronous: Orbax writes in the background (one save at a time, in
        order); False writes before :meth:`save` returns.

    Attributes:
      save_seconds: Wall time the caller spent in :meth:`save` and waiting for
        writes so far (the host copy; everything when synchronous).
    """

    def __init__(self, directory: str, *, every: int = 5, keep: int = 3, asynchronous: bool = True):
        if every < 1 or keep < 1:
            raise ValueError(f"every and keep must be >= 1, got {every} and {keep}")
        self.directory = os.path.abspath(directory)
        self.every = every
        self.save_seconds = 0.0
        self._asynchronous = asynchronous
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                # Named handlers, so that a fresh manager can read item metadata.
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "history": ocp.JsonCheckpointHandler(),
                },
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep,
                    # Every `every` epochs (Orbax's default also saves the first one).
                    save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
                    create=True,
                    enable_async_checkpointing=asynchronous,
                    cleanup_tmp_directories=True,  # Leftovers of a save killed midway.
                ),
            )
        except Exception as e:  # Orbax raises several types for unusable folders.
            raise CheckpointError(f"cannot use checkpoint folder {self.directory}: {e}") from None

    def latest_epoch(self, *, reload: bool = False) -> int | None:
        """The epoch of the newest complete checkpoint, or None.

        Args:
          reload: Read the folder again instead of trusting what this manager
            knows, e.g. after a save that an interrupt may have cut short.
        """
        self.wait()
        if reload:
            self._manager.reload()
        return self._manager.latest_step()

    def should_save(self, epoch: int, last_epoch: int) -> bool:
        """Orbax's interval (every ``every`` epochs), and always the last epoch."""
        return epoch == last_epoch or self._manager.should_save(epoch)

    def save(self, epoch: int, state, history: list[dict[str, Any]]) -> None:
        """Saves the state after ``epoch`` and the per-epoch loss terms so far."""
        t = time.perf_counter()
        history_json = {name: [np.asarray(h[name]).tolist() for h in history]
                        for name in history[0]}  # fmt: skip
        # A copy, not a view: on the CPU a device buffer can share memory with the
        # host array, and the next epoch overwrites the buffers it was donated.
        tree = jax.tree.map(np.array, jax.device_get(_state_tree(state)))
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), history=ocp.args.JsonSave(history_json)
                ),
                force=True,  # should_save decided; the last epoch is saved off the interval.
            )
            if not self._asynchronous:
                self._manager.wait_until_finished()
        except Exception as e:  # A full disk, a folder removed under us ...
            raise CheckpointError(f"cannot write checkpoint {epoch} in {self.directory}: "
                                  f"{e}") from None  # fmt: skip
        finally:
            self.save_seconds += time.perf_counter() - t

    def wait(self) -> None:
        """Blocks until every save so far is on disk; raises a failed write's error."""
        t = time.perf_counter()
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"cannot write a checkpoint in {self.directory}: {e}") from None
        finally:
            self.save_seconds += time.perf_counter() - t

    def restore(self, template, epoch: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
        """Restores a checkpoint into the structure (and shardings) of ``template``.

        Args:
          template: A freshly initialized state of the same model(s).
          epoch: Which checkpoint; the latest when None.

        Returns:
          The restored state and its history, one dict of loss terms per epoch.

        Raises:
          CheckpointError: No checkpoint, a foreign or corrupt one, or one
            whose shapes differ from the model's (the message lists them).
        """
        self.wait()
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        expected = _state_tree(template)
        try:
            metadata = self._manager.item_metadata(epoch)
            saved = metadata["state"] if metadata is not None else None
        except Exception as e:
            raise CheckpointError(
                f"unreadable checkpoint {epoch} in {self.directory}: {e}"
            ) from None
        if saved is not None:
            # The parameters define the model's shape (optimizer paths are stored differently).
            differences = _shape_differences(saved.get("params", {}), expected["params"])
            if differences:
                raise CheckpointError(
                    f"checkpoint in {self.directory} does not fit this model: "
                    + "; ".join(differences[:3])
                    + (f" (+{len(differences) - 3} more)" if len(differences) > 3 else "")
                )
        try:
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(expected)),
                    history=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"corrupt or foreign checkpoint {epoch} in {self.directory}: {first}"
            ) from None
        tree, history_json = restored["state"], restored["history"]
        state = template.replace(
            params=tree["params"],
            opt_state=tree["opt_state"],
            key=jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(template.key)),
            epoch=tree["epoch"],
        )
        history = [
            {name: np.asarray(values[i], np.float32) for name, values in history_json.items()}
            for i in range(len(history_json["total"]))
        ]
        return state, history

    def close(self) -> None:
        """Waits for pending writes and releases the folder."""
        try:
            self.wait()
        finally:
            # Orbax's close does not wait for the removal of a killed save's leftovers that
            # its constructor starts in a thread; a process that exits first (an error right
            # after opening the folder) printed that thread's traceback.
            cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
            if cleanup is not None:
                cleanup()
            self._manager.close()
