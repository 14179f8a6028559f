"""The host driver of training: :func:`train` runs the pure ``trainer.init`` and
``trainer.epoch`` (:mod:`jax_vae.train.core`), one compiled epoch per loop step, on one
device or a mesh, for one model or K vmapped ones, and hands each finished epoch to hooks
(progress log, finiteness check, checkpoints, TensorBoard, your own); it resumes from a
checkpointer and stops on Ctrl-C between epochs. There is no other training path.

Progress is logged through ``absl.logging`` at INFO; in a plain script call
``absl.logging.set_verbosity("info")`` to see it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jax_vae import errors, rules, sharding, spec
from jax_vae import keys as keys_lib
from jax_vae.checkpoints import Checkpointer, CheckpointError
from jax_vae.train.core import (
    ADAM,
    TrainState,
    check_args,
    check_padding,
    device_images,
    make_train,
    num_batches,
    stack_history,
    vmap_models,
)

Terms = dict[str, Any]


class TrainResult(NamedTuple):
    """What :func:`train` returns (leading axes: [models,] epochs)."""

    params: Any
    history: Terms  # Per-epoch means of each loss term.
    state: TrainState
    train_seconds: float = float("nan")
    compile_seconds: float = float("nan")
    epochs_run: int = 0  # Epochs trained by this call (fewer than the history when resumed).
    microbatches: int = 1  # Slices each batch's gradient was accumulated over.


class Epoch(NamedTuple):
    """What a hook sees after each epoch."""

    name: str
    epoch: int  # 1-based.
    epochs: int
    means: Terms  # Host arrays: scalars, or [K] for K models.
    seconds: float
    state: TrainState  # On the device; do not keep it past the hook (it is donated).
    history: list[Terms]  # Every epoch so far, this one included.


Hook = Callable[[Epoch], None]


NonFiniteLossError = errors.NonFiniteLossError




def _fmt(values: np.ndarray) -> str:
    values = np.atleast_1d(values)
    if values.size > 4:  # Many models: keep the progress line short.
        return f"{values.mean():.3f} [{values.min():.3f}..{values.max():.3f}]"
    return " ".join(f"{v:.3f}" for v in values)


def log_progress(e: Epoch) -> None:
    """Logs one line per epoch (absl INFO): every loss term."""
    terms = "  ".join(f"{name} {_fmt(v)}" for name, v in e.means.items())
    logging.info("%s epoch %d/%d  %s  (%.2fs)", e.name, e.epoch, e.epochs, terms, e.seconds)


def check_finite(e: Epoch) -> None:
    """Stops training at the first NaN or infinite loss, naming the epoch."""
    if not np.all(np.isfinite(e.means["total"])):
        raise NonFiniteLossError(
            f"{e.name}: non-finite loss at epoch {e.epoch}/{e.epochs} "
            f"(loss {e.means['total']}); try a lower learning rate or beta"
        )


def save_checkpoints(checkpointer: Checkpointer) -> Hook:
    """Saves every ``checkpointer.every`` epochs and after the last one."""

    def hook(e: Epoch) -> None:
        if checkpointer.should_save(e.epoch, e.epochs):
            checkpointer.save(e.epoch, e.state, e.history)

    return hook


def _place(mesh, key, hparams, images, batch_size, group_size):
    """Checks the layout; puts data, keys and hparams on the mesh. Returns what the
    epoch needs: (key, hparams, images, state sharding, batch sharding, group size)."""
    if mesh is None:
        return key, hparams, images, None, None, group_size
    layout, width = mesh.axis_names[0], mesh.devices.size
    if layout == sharding.DATA:
        sharding.check_data_parallel(batch_size, width)
    per_model = None
    if layout == sharding.MODELS:
        if key.ndim != 1 or key.shape[0] % width:
            raise rules.InvalidArgument(
                f"the models layout needs a number of models that divides by {width} devices, "
                f"got {key.shape[0] if key.ndim else 'one model'}"
            )
        per_model, group_size = sharding.leading_axis(mesh), 0  # K / n models per device.
    # Data lives on every device once; the state is replicated (data) or split by model.
    state_sharding = per_model or sharding.replicated(mesh)
    images = sharding.put(images, sharding.replicated(mesh))
    batches = sharding.leading_axis(mesh) if layout == sharding.DATA else None  # Examples.
    key = sharding.put(key, state_sharding)
    hparams = jax.tree.map(lambda v: sharding.put(v, state_sharding), hparams)
    return key, hparams, images, state_sharding, batches, group_size


# On the CPU, a training step's temporary memory (XLA's analysis of the compiled epoch) above
# which the batch's gradient is accumulated over slices of it (``microbatches``). Activations
# grow with the image: the conv AE at 128x128 RGB needs 2.1 GB at batch 128 and 75 MB in 32
# slices, and runs 1.6x faster so (a slice's activations stay in the CPU's caches). The seed
# spec's models (3 MB) and the conv models at 28x28 (110 MB) train whole batches. On a GPU or
# TPU the budget is half the device's memory: slices only where a batch would not fit.
STEP_MEMORY = 128 * 2**20


def step_budget() -> int | None:
    """The temporary memory a training step may take before its batch is sliced (None: the
    backend does not say how much it has)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return STEP_MEMORY
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return limit // 2 if limit else None


@functools.lru_cache(maxsize=32)
def _programs(model, tx, batch_size, batch_sharding, state_sharding, stacked, group_size,
              padded, microbatches=1):  # fmt: skip
    """The jitted init and epoch of :func:`train`, one pair per (model, optimizer, layout):
    calls with the same objects and shapes, e.g. every class of a grid padded to one size,
    reuse their compiled programs. Padded, the epoch returns each step's sums (see
    :func:`_real_means`)."""
    trainer = make_train(model, tx=tx, batch_size=batch_size, batch_sharding=batch_sharding,
                         microbatches=microbatches)  # fmt: skip
    init, epoch_fn = trainer.init_from, trainer.epoch_sums if padded else trainer.epoch
    if stacked:
        init = jax.vmap(init, in_axes=(0, None, 0))
        epoch_fn = vmap_models(epoch_fn, group_size=group_size)

    def train_epoch(state, images, hparams, count):  # The name XLA's compile events carry.
        return epoch_fn(state, images, hparams, count)

    return jax.jit(init, out_shardings=state_sharding), jax.jit(train_epoch, donate_argnums=0)


def _temp_bytes(compiled) -> int:
    analysis = compiled.memory_analysis()  # None where the backend does not say.
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def _microbatches(compiled, batch_size: int) -> int:
    """The fewest slices (a divisor of the batch) that bring the step's temporary memory,
    which grows with the slice, under :func:`step_budget`; 1 where it is under already."""
    budget = step_budget()
    if not budget:
        return 1
    need = min(-(-_temp_bytes(compiled) // budget), batch_size)  # At most one image each.
    return next(m for m in range(max(need, 1), batch_size + 1) if batch_size % m == 0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _real_means(sums: Terms, steps: int, n: int) -> Terms:
    """The mean loss terms of a padded epoch: a sum over its real steps only, as long as
    the unpadded epoch's (so the history is the same bit for bit)."""
    return {k: jnp.sum(s[..., :steps], axis=-1) / n for k, s in sums.items()}


def train(
    key: jax.Array,
    images: jax.Array | np.ndarray,
    hparams: Mapping[str, Any] | None = None,
    *,
    model: Any,
    tx: optax.GradientTransformation | None = None,
    epochs: int = spec.EPOCHS,
    batch_size: int = spec.BATCH_SIZE,
    name: str = "model",
    hooks: Sequence[Hook] = (log_progress,),
    group_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checkpointer: Checkpointer | None = None,
    pad_to: int | None = None,
    microbatches: int | None = None,
) -> TrainResult:
    """Trains a model (or K models), one compiled epoch of :func:`make_train` per loop step.

    Pass one key for one model, or keys [K] for K models trained together by
    one vmapped program; each hyperparameter is then a scalar (shared) or [K]
    (one per model). The epoch is compiled once, ahead of time; the only host
    transfer per epoch is the epoch's mean loss terms, for the hooks.

    Args:
      key: A PRNG key or [K] of them (typed, or legacy ``PRNGKey`` data).
      images: Training images [N, features] (NumPy or JAX); moved to the device once.
      hparams: Hyperparameters (see :func:`make_train`); the model's defaults
        fill in what is missing.
      model: A :class:`jax_vae.registry.Model`.
      tx: Any optax optimizer (see :func:`make_train`); default Adam 1e-3.
      epochs: Passes over the data.
      batch_size: Examples per step.
      name: Name used in log lines and errors.
      hooks: Called in order after each epoch with an :class:`Epoch`; the
        finiteness check always runs first, checkpoint saving last. The
        default logs progress; ``()`` trains silently.
      group_size: With K models, how many are vmapped together; groups run one
        after another in the same program. None: :func:`default_group_size`.
      mesh: A 1-D device mesh (:func:`jax_vae.sharding.make_mesh`). Axis
        ``data``: each batch is split over the devices (``batch_size`` must
        divide by their number). Axis ``models``: K models are spread over the
        devices (K must divide by their number). None: the default device.
      checkpointer: Saves every ``checkpointer.every`` epochs and at the end
        (written in the background while training goes on; all on disk when
        this returns); when it holds a checkpoint, training resumes from the
        latest one and ends exactly where an uninterrupted run would.
      pad_to: Train on the images padded to this many rows, masked
        (:meth:`Trainer.epoch_sums`): the same result bit for bit, from a
        program that serves every training-set size padding to ``pad_to``
        (compiled once for all the classes of a grid; :func:`padded_sizes`).
      microbatches: Accumulate each batch's gradient over this many slices of it (a
        divisor of ``batch_size``; the same update up to float rounding). None: as many as
        keep the step's temporary memory under :func:`step_budget` (1 for small images).

    Returns:
      Parameters, history [([K,] epochs)] per loss term, final state, training
      seconds (excluding compilation) and compilation seconds.

    Raises:
      InvalidArgument: Bad batch size, epochs, key, or hyperparameter shapes.
      NonFiniteLossError: A loss became NaN or infinite; names the epoch.
    """
    images = device_images(images)
    n = images.shape[0]
    check_args(n, batch_size=batch_size, epochs=epochs)
    count = None
    if pad_to is not None:  # Padded (even to n itself): the one program of every such size.
        check_padding(n, pad_to)
        images, count = jnp.pad(images, ((0, pad_to - n), (0, 0))), jnp.asarray(n, jnp.int32)
    key = keys_lib.as_typed(jnp.asarray(key))
    if key.ndim > 1:
        raise rules.InvalidArgument(f"key must be one key or [K] keys, got {list(key.shape)}")
    hparams = {**model.hparams, **(hparams or {})}
    hparams = {k: jnp.asarray(v, images.dtype) for k, v in hparams.items()}
    for k, v in hparams.items():
        if v.ndim > key.ndim or (v.ndim and v.shape != key.shape):
            raise rules.InvalidArgument(
                f"hparams[{k!r}] {list(v.shape)} must be a scalar or one value per key "
                f"{list(key.shape)}"
            )
    if key.ndim:  # One value per model.
        hparams = {k: jnp.broadcast_to(v, key.shape) for k, v in hparams.items()}
    t0 = time.perf_counter()
    key, hparams, images, state_sharding, batches, group_size = _place(
        mesh, key, hparams, images, batch_size, group_size
    )
    program = functools.partial(_programs, model, tx or ADAM, batch_size, batches,
                                state_sharding, bool(key.ndim), group_size, count is not None)
    init, epoch_fn = program(microbatches or 1)
    state = init(key, images[0], hparams)  # The first image (the same in every layout).
    if count is not None and mesh is not None:
        count = sharding.put(count, sharding.replicated(mesh))
    compiled = epoch_fn.lower(state, images, hparams, count).compile()
    if microbatches is None and batches is not None:
        microbatches = 1  # Data parallel: each device holds a share of the batch already.
    if microbatches is None:  # Slices where a whole batch's activations take too much.
        microbatches = _microbatches(compiled, batch_size)
        if microbatches > 1:
            logging.info("%s: each batch's gradient accumulated over %d slices of %d images "
                         "(a whole batch needs %d MB)", name, microbatches,
                         batch_size // microbatches, _temp_bytes(compiled) // 2**20)
            compiled = program(microbatches)[1].lower(state, images, hparams, count).compile()
    compile_seconds = time.perf_counter() - t0

    history: list[Terms] = []
    if checkpointer is not None and checkpointer.latest_epoch() is not None:
        state, history = checkpointer.restore(state)
        if len(history) > epochs:
            raise CheckpointError(
                f"{name}: the checkpoint is at epoch {len(history)}, past epochs={epochs}"
            )
        logging.info("%s: resumed from the checkpoint of epoch %d", name, len(history))
    all_hooks = [check_finite, *hooks]
    if checkpointer is not None:
        all_hooks.append(save_checkpoints(checkpointer))
    first_epoch, train_seconds = len(history) + 1, 0.0
    for epoch in range(first_epoch, epochs + 1):
        t = time.perf_counter()
        state, means = compiled(state, images, hparams, count)
        means = sharding.local_copy(means if count is None else _real_means(
            means, num_batches(n, batch_size), n))  # fmt: skip  # Waits for the epoch to finish.
        seconds = time.perf_counter() - t
        train_seconds += seconds
        history.append(means)
        for hook in all_hooks:
            hook(Epoch(name, epoch, epochs, means, seconds, state, history))
    if checkpointer is not None:
        checkpointer.wait()  # Saves overlap the next epochs; on return they are on disk.
    return TrainResult(
        state.params, stack_history(history), state, train_seconds, compile_seconds,
        epochs + 1 - first_epoch, microbatches,
    )  # fmt: skip
