"""On-device training: one epoch is a permutation and one ``jax.lax.scan``.

Two entry points share :func:`train_epoch`:

* :func:`train_scan` -- the whole run as a pure, traceable function of
  ``(key, beta, images)``; ``jax.jit(jax.vmap(...))`` over keys and betas trains
  many models in one program.
* :func:`train` -- the driver users call: one compiled epoch per Python step,
  per-epoch logging, a stop on a non-finite loss. It accepts a batch of keys
  and betas too (leading axis), vmapping the same epoch function.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct

from jax_vae import sharding
from jax_vae.checkpoints import Checkpointer, CheckpointError
from jax_vae.losses import ExampleLoss, LossTerms, make_example_loss
from jax_vae.models import init_params


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from one epoch to the next."""

    params: Any
    opt_state: optax.OptState
    key: jax.Array  # Split every epoch; the old key is never used again.
    epoch: jax.Array


class TrainResult(NamedTuple):
    """Trained parameters and per-epoch means (leading axes: [models,] epochs)."""

    params: Any
    history: LossTerms
    state: TrainState
    train_seconds: float = float("nan")
    compile_seconds: float = float("nan")
    epochs_run: int = 0  # Epochs trained by this call (fewer than the history when resumed).


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """The optimizer of every run (Adam); its state is part of :class:`TrainState`."""
    return optax.adam(learning_rate)


def init_state(
    key: jax.Array, example: jax.Array, *, model: nn.Module, optimizer: optax.GradientTransformation
) -> TrainState:
    """Initializes parameters, optimizer state and the training key.

    Args:
      key: A typed PRNG key; split into the init key and the training key.
      example: One input image [784], for shapes.
      model: The model.
      optimizer: The optax optimizer.

    Returns:
      The state at epoch 0.
    """
    init_key, train_key = jax.random.split(key)
    params = init_params(model, init_key, example)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        key=train_key,
        epoch=jnp.zeros((), jnp.int32),
    )


def init_states(
    key: jax.Array, example: jax.Array, *, model: nn.Module, learning_rate: float
) -> TrainState:
    """The epoch-0 state of one model (a key) or of K models ([K] keys, stacked).

    This is the structure :func:`train` trains and checkpoints, e.g. the
    template to restore a checkpoint into.
    """
    init = functools.partial(init_state, model=model, optimizer=make_optimizer(learning_rate))
    if jnp.ndim(key) == 1:
        return jax.vmap(init, in_axes=(0, None))(key, example)
    return init(key, example)


def stack_history(history: list[LossTerms]) -> LossTerms:
    """Per-epoch means, one LossTerms per epoch, as arrays [..., epochs]."""
    return LossTerms(*(np.stack(h, axis=-1) for h in zip(*history, strict=True)))


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per epoch; the last one is partial (masked) when needed."""
    return math.ceil(num_examples / batch_size)


def train_epoch(
    state: TrainState,
    images: jax.Array,
    beta: jax.Array,
    *,
    loss_fn: ExampleLoss,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    batch_sharding: jax.sharding.Sharding | None = None,
    kl_warmup_epochs: int = 0,
) -> tuple[TrainState, LossTerms]:
    """One pass over every training image, in a fresh random order.

    The permutation is padded to whole batches; padded rows carry weight 0, so
    each real image counts once and the partial last batch averages only over
    its real images.

    Args:
      state: The carried training state.
      images: All training images [N, 784], on the device.
      beta: KL weight (a traced scalar).
      loss_fn: Per-example loss ``(params, x, key, beta) -> LossTerms``.
      optimizer: The optax optimizer.
      batch_size: Examples per step.
      batch_sharding: Optional sharding of the ``[steps, batch, 784]``
        batches, e.g. the batch axis split over devices (data parallel).
      kl_warmup_epochs: Ramp the KL weight linearly from beta / W in the
        first epoch to beta at epoch W (KL warm-up); 0 = constant beta.

    Returns:
      The new state and the epoch's mean loss terms over the N images.
    """
    n = images.shape[0]
    steps = num_batches(n, batch_size)
    key, perm_key, step_key = jax.random.split(state.key, 3)
    order = jnp.pad(jax.random.permutation(perm_key, n), (0, steps * batch_size - n))
    weights = (jnp.arange(steps * batch_size) < n).astype(images.dtype)
    batches = images[order].reshape(steps, batch_size, -1)
    weights = weights.reshape(steps, batch_size)
    if batch_sharding is not None:
        batches = jax.lax.with_sharding_constraint(batches, batch_sharding)
        weights = jax.lax.with_sharding_constraint(weights, batch_sharding)
    batched_loss = jax.vmap(loss_fn, in_axes=(None, 0, 0, None))
    if kl_warmup_epochs:
        beta = beta * jnp.minimum(1.0, (state.epoch + 1) / kl_warmup_epochs).astype(beta.dtype)

    def batch_objective(params, x, w, k):
        terms = batched_loss(params, x, jax.random.split(k, batch_size), beta)
        sums = LossTerms(*(jnp.sum(w * t) for t in terms))
        return sums.total / jnp.sum(w), sums

    def step(carry, batch):
        params, opt_state = carry
        x, w, k = batch
        grads, sums = jax.grad(batch_objective, has_aux=True)(params, x, w, k)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), sums

    (params, opt_state), sums = jax.lax.scan(
        step, (state.params, state.opt_state), (batches, weights, jax.random.split(step_key, steps))
    )
    means = LossTerms(*(jnp.sum(s) / n for s in sums))
    new_state = state.replace(params=params, opt_state=opt_state, key=key, epoch=state.epoch + 1)
    return new_state, means


def make_train_fns(
    *,
    model: nn.Module,
    batch_size: int,
    learning_rate: float,
    loss_fn: ExampleLoss | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    kl_warmup_epochs: int = 0,
) -> tuple[
    Callable[[jax.Array, jax.Array], TrainState], Callable[..., tuple[TrainState, LossTerms]]
]:
    """The pure ``init(key, example)`` and ``epoch(state, images, beta)`` of a run.

    Args:
      model: The model.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      batch_sharding: Passed to :func:`train_epoch`.
      kl_warmup_epochs: Passed to :func:`train_epoch`.

    Returns:
      The two functions, ready for ``jax.jit`` and ``jax.vmap``.
    """
    optimizer = make_optimizer(learning_rate)
    init_fn = functools.partial(init_state, model=model, optimizer=optimizer)
    epoch_fn = functools.partial(
        train_epoch,
        loss_fn=loss_fn or make_example_loss(model),
        optimizer=optimizer,
        batch_size=batch_size,
        batch_sharding=batch_sharding,
        kl_warmup_epochs=kl_warmup_epochs,
    )
    return init_fn, epoch_fn


def _check_args(images: jax.Array, batch_size: int, epochs: int) -> None:
    if images.ndim != 2:
        raise ValueError(f"images must be [N, features], got shape {images.shape}")
    n = images.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (training set size), got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")


def train_scan(
    key: jax.Array,
    beta: jax.Array,
    images: jax.Array,
    *,
    model: nn.Module,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    loss_fn: ExampleLoss | None = None,
    kl_warmup_epochs: int = 0,
) -> TrainResult:
    """A whole training run as one pure function of (key, beta, images).

    All epochs run inside ``jax.lax.scan``, so this traces, jits and vmaps:
    ``jax.jit(jax.vmap(functools.partial(train_scan, model=m), in_axes=(0, 0, None)))``
    trains one model per (key, beta) pair in a single program. It neither logs
    nor stops on a non-finite loss: inspect ``history``.

    Args:
      key: Typed PRNG key of the run (init, shuffling and sampling).
      beta: KL weight (ignored by the autoencoder).
      images: Training images [N, 784].
      model: The model.
      epochs: Passes over the data.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      kl_warmup_epochs: KL warm-up length (see :func:`train_epoch`).

    Returns:
      The trained parameters, per-epoch history [epochs] and final state.
    """
    _check_args(images, batch_size, epochs)
    init_fn, epoch_fn = make_train_fns(
        model=model,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss_fn=loss_fn,
        kl_warmup_epochs=kl_warmup_epochs,
    )
    state = init_fn(key, images[0])
    beta = jnp.asarray(beta, images.dtype)
    state, history = jax.lax.scan(lambda s, _: epoch_fn(s, images, beta), state, length=epochs)
    return TrainResult(state.params, history, state)


EpochCallback = Callable[[int, LossTerms, float], None]


def default_group_size(backend: str | None = None) -> int | None:
    """Models vmapped together by default: all on accelerators, pairs on CPU.

    On a GPU or TPU one small model leaves the chip idle, so vmapping all K
    fills it. On a CPU the matmuls are already compute-bound and K models'
    weights and Adam moments stop fitting in cache: measured on a 2-core CPU,
    vmapping all 16 costs 1.3x 16 single trainings, pairs 1.0x.
    """
    return 2 if (backend or jax.default_backend()) == "cpu" else None


def vmap_models(epoch_fn: Callable, *, group_size: int | None = None) -> Callable:
    """Lifts ``epoch(state, images, beta)`` to K stacked states and betas.

    Args:
      epoch_fn: The single-model epoch function.
      group_size: Models vmapped together (``jax.lax.map`` runs the groups in
        sequence); None picks :func:`default_group_size`, 0 vmaps all.

    Returns:
      ``epoch(states[K], images, betas[K]) -> (states[K], LossTerms[K])``.
    """
    vmapped = jax.vmap(epoch_fn, in_axes=(0, None, 0))
    group_size = default_group_size() if group_size is None else group_size
    if not group_size:
        return vmapped

    def grouped(states, images, betas):
        if group_size >= betas.shape[0]:
            return vmapped(states, images, betas)
        return jax.lax.map(
            lambda sb: epoch_fn(sb[0], images, sb[1]), (states, betas), batch_size=group_size
        )

    return grouped


def train(
    key: jax.Array,
    images: jax.Array | np.ndarray,
    *,
    model: nn.Module,
    beta: float | jax.Array = 1.0,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    loss_fn: ExampleLoss | None = None,
    name: str = "model",
    callback: EpochCallback | None = None,
    group_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checkpointer: Checkpointer | None = None,
    kl_warmup_epochs: int = 0,
) -> TrainResult:
    """Trains a model (or a batch of models) with per-epoch logging.

    Pass one key and a scalar beta for one model, or keys [K] and betas [K]
    for K models trained together by one vmapped program. Each epoch is one
    compiled call (compiled once, ahead of time); the only host transfer per
    epoch is the epoch's mean losses, for the log and the finiteness check.

    Args:
      key: A typed PRNG key, or a [K] array of them.
      images: Training images [N, 784]; moved to the device once.
      model: The model.
      beta: KL weight, scalar or [K].
      epochs: Passes over the data.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      name: Name used in log lines and errors.
      callback: Called after each epoch as ``callback(epoch, means, seconds)``
        with host (NumPy) means.
      group_size: With K models, how many are vmapped together; groups run one
        after another in the same program. None: :func:`default_group_size`.
      mesh: A 1-D device mesh (:func:`jax_vae.sharding.make_mesh`). Axis
        ``data``: each batch is split over the devices (``batch_size`` must
        divide by their number). Axis ``models``: K models are spread over the
        devices (K must divide by their number). None: the default device.
      checkpointer: Saves every ``checkpointer.every`` epochs and at the end;
        when it holds a checkpoint, training resumes from the latest one and
        ends exactly where an uninterrupted run would.
      kl_warmup_epochs: KL warm-up length (see :func:`train_epoch`).

    Returns:
      Parameters, history [([K,] epochs)], final state, training seconds
      (excluding compilation) and compilation seconds.

    Raises:
      ValueError: Bad batch size or mismatched key/beta batch.
      NonFiniteLossError: A loss became NaN or infinite; names the epoch.
    """
    images = jnp.asarray(images)
    _check_args(images, batch_size, epochs)
    batched = jnp.ndim(key) == 1
    beta = jnp.asarray(beta, images.dtype)
    if batched != (beta.ndim == 1) or (batched and key.shape[0] != beta.shape[0]):
        raise ValueError(
            f"key {jnp.shape(key)} and beta {beta.shape} must both be scalars or both [K]"
        )
    layout = mesh.axis_names[0] if mesh is not None else None
    width = mesh.devices.size if mesh is not None else 1
    if layout == sharding.DATA and batch_size % width:
        raise ValueError(
            f"batch_size {batch_size} must divide by the data-parallel width ({width} devices)"
        )
    if layout == sharding.MODELS:
        if not batched or key.shape[0] % width:
            raise ValueError(
                f"the models layout needs a number of models that divides by {width} devices, "
                f"got {key.shape[0] if batched else 'one model'}"
            )
        group_size = 0  # Each device runs its K / n models vmapped.
    _, epoch_fn = make_train_fns(
        model=model,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss_fn=loss_fn,
        batch_sharding=sharding.batch_axis(mesh) if layout == sharding.DATA else None,
        kl_warmup_epochs=kl_warmup_epochs,
    )
    if batched:
        epoch_fn = vmap_models(epoch_fn, group_size=group_size)
    init_fn = functools.partial(init_states, model=model, learning_rate=learning_rate)

    t0 = time.perf_counter()
    state_sharding = None
    if mesh is not None:
        # Data lives on every device once; the state is replicated (data) or
        # split by model (models).
        images = sharding.put(images, sharding.replicated(mesh))
        per_model = sharding.leading_axis(mesh) if layout == sharding.MODELS else None
        beta = sharding.put(beta, per_model or sharding.replicated(mesh))
        key = sharding.put(key, per_model or sharding.replicated(mesh))
        state_sharding = per_model or sharding.replicated(mesh)
    state = jax.jit(init_fn, out_shardings=state_sharding)(key, images[0])
    compiled = jax.jit(epoch_fn, donate_argnums=0).lower(state, images, beta).compile()
    compile_seconds = time.perf_counter() - t0

    history: list[LossTerms] = []
    first_epoch = 1
    if checkpointer is not None and checkpointer.latest_epoch() is not None:
        state, history = checkpointer.restore(state)
        first_epoch = len(history) + 1
        if first_epoch > epochs + 1:
            raise CheckpointError(
                f"{name}: the checkpoint is at epoch {first_epoch - 1}, past --epochs={epochs}"
            )
        logging.info("%s: resumed from the checkpoint of epoch %d", name, first_epoch - 1)
    train_seconds = 0.0
    for epoch in range(first_epoch, epochs + 1):
        t = time.perf_counter()
        state, means = compiled(state, images, beta)
        means = LossTerms(*sharding.local_copy(means))  # Waits for the epoch to finish.
        seconds = time.perf_counter() - t
        train_seconds += seconds
        if not np.all(np.isfinite(means.total)):
            raise NonFiniteLossError(
                f"{name}: non-finite loss at epoch {epoch}/{epochs} "
                f"(loss {means.total}); try a lower learning rate or beta"
            )
        logging.info(
            "%s epoch %d/%d  loss %s  recon %s  kl %s  (%.2fs)",
            name,
            epoch,
            epochs,
            _fmt(means.total),
            _fmt(means.reconstruction),
            _fmt(means.kl),
            seconds,
        )
        if callback is not None:
            callback(epoch, means, seconds)
        history.append(means)
        if checkpointer is not None and checkpointer.should_save(epoch, epochs):
            checkpointer.save(epoch, state, history)

    return TrainResult(
        state.params,
        stack_history(history),
        state,
        train_seconds,
        compile_seconds,
        epochs + 1 - first_epoch,
    )


def _fmt(values: np.ndarray) -> str:
    values = np.atleast_1d(values)
    if values.size > 4:  # Many models: keep the progress line short.
        return f"{values.mean():.3f} [{values.min():.3f}..{values.max():.3f}]"
    return " ".join(f"{v:.3f}" for v in values)
