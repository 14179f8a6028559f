"""On-device training: one epoch is a permutation and one ``jax.lax.scan``.

Two entry points share :func:`train_epoch`, both called as ``(key, images, beta)``:

* :func:`train_scan` -- the whole run as a pure, traceable function; wrapped in
  ``jax.jit(jax.vmap(...))`` over keys and betas it trains many models in one
  program.
* :func:`train` -- the driver: a short host loop that runs one compiled epoch
  per step and hands each finished epoch to hooks (progress log, finiteness
  check, checkpoints, your own), in the spirit of CLU's periodic actions. It
  takes a batch of keys and betas too (leading axis), vmapping the same epoch.

Keys follow :mod:`jax_vae.keys`. Progress is logged through ``absl.logging`` at
INFO; in a plain script call ``absl.logging.set_verbosity("info")`` to see it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct

from jax_vae import errors, rules, sharding
from jax_vae import keys as keys_lib
from jax_vae.checkpoints import Checkpointer, CheckpointError
from jax_vae.losses import ExampleLoss, LossTerms, make_example_loss
from jax_vae.models import init_params


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from one epoch to the next."""

    params: Any
    opt_state: optax.OptState
    key: jax.Array  # The epoch key: split every epoch, never used again.
    epoch: jax.Array


class TrainResult(NamedTuple):
    """Trained parameters and per-epoch means (leading axes: [models,] epochs)."""

    params: Any
    history: LossTerms
    state: TrainState
    train_seconds: float = float("nan")
    compile_seconds: float = float("nan")
    epochs_run: int = 0  # Epochs trained by this call (fewer than the history when resumed).


class Epoch(NamedTuple):
    """What a hook sees after each epoch."""

    name: str
    epoch: int  # 1-based.
    epochs: int
    means: LossTerms  # Host arrays: scalars, or [K] for K models.
    seconds: float
    state: TrainState  # On the device; do not keep it past the hook (it is donated).
    history: list[LossTerms]  # Every epoch so far, this one included.


Hook = Callable[[Epoch], None]


NonFiniteLossError = errors.NonFiniteLossError


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """The optimizer of every run (Adam); its state is part of :class:`TrainState`."""
    return optax.adam(learning_rate)


def init_state(
    key: jax.Array, example: jax.Array, *, model: nn.Module, learning_rate: float
) -> TrainState:
    """The epoch-0 state of one model (a key) or of K models ([K] keys, stacked).

    Args:
      key: A typed PRNG key or [K] of them (see :func:`jax_vae.keys.init_keys`).
      example: One input image [784], for shapes.
      model: The model.
      learning_rate: Adam step size (the optimizer state's structure).

    Returns:
      The state that :func:`train` trains and checkpoints, e.g. the template
      to restore a checkpoint into.
    """
    optimizer = make_optimizer(learning_rate)

    def one(key):
        init_key, epoch_key = keys_lib.init_keys(key)
        params = init_params(model, init_key, example)
        return TrainState(params, optimizer.init(params), epoch_key, jnp.zeros((), jnp.int32))

    return jax.vmap(one)(key) if jnp.ndim(key) == 1 else one(key)


def stack_history(history: list[LossTerms]) -> LossTerms:
    """Per-epoch means, one LossTerms per epoch, as arrays [..., epochs]."""
    return LossTerms(*(np.stack(h, axis=-1) for h in zip(*history, strict=True)))


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per epoch; the last one is partial (masked) when needed."""
    return math.ceil(num_examples / batch_size)


def warmed_beta(beta: jax.Array, epoch: jax.Array, kl_warmup_epochs: int) -> jax.Array:
    """The KL weight of (1-based) ``epoch``: ramped linearly to beta over the warm-up."""
    if not kl_warmup_epochs:
        return beta
    return beta * jnp.minimum(1.0, epoch / kl_warmup_epochs).astype(jnp.result_type(beta))


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
    key, perm_key, step_key = keys_lib.epoch_keys(state.key)
    order = jnp.pad(jax.random.permutation(perm_key, n), (0, steps * batch_size - n))
    weights = (jnp.arange(steps * batch_size) < n).astype(images.dtype)
    batches = images[order].reshape(steps, batch_size, -1)
    weights = weights.reshape(steps, batch_size)
    if batch_sharding is not None:
        batches = jax.lax.with_sharding_constraint(batches, batch_sharding)
        weights = jax.lax.with_sharding_constraint(weights, batch_sharding)
    batched_loss = jax.vmap(loss_fn, in_axes=(None, 0, 0, None))
    beta = warmed_beta(beta, state.epoch + 1, kl_warmup_epochs)

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


def make_epoch_fn(
    *,
    model: nn.Module,
    batch_size: int,
    learning_rate: float,
    loss_fn: ExampleLoss | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    kl_warmup_epochs: int = 0,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, LossTerms]]:
    """The pure ``epoch(state, images, beta)`` of a run, ready for jit and vmap.

    Args:
      model: The model.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      batch_sharding: Passed to :func:`train_epoch`.
      kl_warmup_epochs: Passed to :func:`train_epoch`.
    """
    return functools.partial(
        train_epoch,
        loss_fn=loss_fn or make_example_loss(model),
        optimizer=make_optimizer(learning_rate),
        batch_size=batch_size,
        batch_sharding=batch_sharding,
        kl_warmup_epochs=kl_warmup_epochs,
    )


def check_args(
    n: int, *, batch_size: int, epochs: int, prefix: str = "", what: str = ""
) -> None:
    """The batch size and epoch rules of every run on ``n`` training images.

    ``prefix`` goes before the names in messages (``--`` for flags), ``what``
    after "the training set" (`` of class 3``).
    """
    rules.at_least(f"{prefix}epochs", epochs, 1)
    rules.number(
        f"{prefix}batch_size", batch_size, low=1, high=n, integer=True,
        note=f" (the training set{what} has {n} images)",
    )  # fmt: skip


def _as_images(images: Any) -> jax.Array:
    if np.ndim(images) != 2:
        raise rules.InvalidArgument(f"images must be [N, features], got shape {np.shape(images)}")
    return jnp.asarray(images)


def train_scan(
    key: jax.Array,
    images: jax.Array | np.ndarray,
    beta: float | jax.Array = 1.0,
    *,
    model: nn.Module,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    loss_fn: ExampleLoss | None = None,
    kl_warmup_epochs: int = 0,
) -> TrainResult:
    """A whole training run as one pure function of (key, images, beta).

    All epochs run inside ``jax.lax.scan``, so this traces, jits and vmaps:
    ``jax.jit(jax.vmap(functools.partial(train_scan, model=m), in_axes=(0, None, 0)))``
    trains one model per (key, beta) pair in a single program. It neither logs
    nor stops on a non-finite loss: inspect ``history``.

    Args:
      key: PRNG key of the run (init, shuffling and sampling; :mod:`jax_vae.keys`).
      images: Training images [N, 784] (NumPy or JAX).
      beta: KL weight (ignored by the autoencoder).
      model: The model.
      epochs: Passes over the data.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      kl_warmup_epochs: KL warm-up length (see :func:`train_epoch`).

    Returns:
      The trained parameters, per-epoch history [epochs] and final state.
    """
    images = _as_images(images)
    check_args(images.shape[0], batch_size=batch_size, epochs=epochs)
    epoch_fn = make_epoch_fn(
        model=model,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss_fn=loss_fn,
        kl_warmup_epochs=kl_warmup_epochs,
    )
    state = init_state(keys_lib.as_typed(key), images[0], model=model, learning_rate=learning_rate)
    beta = jnp.asarray(beta, images.dtype)
    state, history = jax.lax.scan(lambda s, _: epoch_fn(s, images, beta), state, length=epochs)
    return TrainResult(state.params, history, state)


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


# ---------------------------------------------------------------------------- hooks


def _fmt(values: np.ndarray) -> str:
    values = np.atleast_1d(values)
    if values.size > 4:  # Many models: keep the progress line short.
        return f"{values.mean():.3f} [{values.min():.3f}..{values.max():.3f}]"
    return " ".join(f"{v:.3f}" for v in values)


def log_progress(e: Epoch) -> None:
    """Logs one line per epoch (absl INFO)."""
    m = e.means
    logging.info(
        "%s epoch %d/%d  loss %s  recon %s  kl %s  (%.2fs)",
        e.name, e.epoch, e.epochs, _fmt(m.total), _fmt(m.reconstruction), _fmt(m.kl), e.seconds,
    )  # fmt: skip


def check_finite(e: Epoch) -> None:
    """Stops training at the first NaN or infinite loss, naming the epoch."""
    if not np.all(np.isfinite(e.means.total)):
        raise NonFiniteLossError(
            f"{e.name}: non-finite loss at epoch {e.epoch}/{e.epochs} "
            f"(loss {e.means.total}); try a lower learning rate or beta"
        )


def save_checkpoints(checkpointer: Checkpointer) -> Hook:
    """Saves every ``checkpointer.every`` epochs and after the last one."""

    def hook(e: Epoch) -> None:
        if checkpointer.should_save(e.epoch, e.epochs):
            checkpointer.save(e.epoch, e.state, e.history)

    return hook


def _place(mesh, key, beta, images, batch_size, group_size):
    """Checks the layout; puts data, keys and betas on the mesh. Returns what the
    epoch needs: (key, beta, images, state sharding, batch sharding, group size)."""
    if mesh is None:
        return key, beta, images, None, None, group_size
    layout, width = mesh.axis_names[0], mesh.devices.size
    if layout == sharding.DATA and batch_size % width:
        raise rules.InvalidArgument(
            f"batch_size {batch_size} must divide by the data-parallel width ({width} devices)"
        )
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
    batches = sharding.batch_axis(mesh) if layout == sharding.DATA else None
    key, beta = sharding.put(key, state_sharding), sharding.put(beta, state_sharding)
    return key, beta, images, state_sharding, batches, group_size


def train(
    key: jax.Array,
    images: jax.Array | np.ndarray,
    beta: float | jax.Array = 1.0,
    *,
    model: nn.Module,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    loss_fn: ExampleLoss | None = None,
    kl_warmup_epochs: int = 0,
    name: str = "model",
    hooks: Sequence[Hook] = (log_progress,),
    callback: Callable[[int, LossTerms, float], None] | None = None,
    group_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Trains a model (or a batch of models), one compiled epoch per loop step.

    Pass one key and a scalar beta for one model, or keys [K] and betas [K]
    for K models trained together by one vmapped program. The epoch is
    compiled once, ahead of time; the only host transfer per epoch is the
    epoch's mean losses, for the hooks.

    Args:
      key: A PRNG key or [K] of them (typed, or legacy ``PRNGKey`` data).
      images: Training images [N, 784] (NumPy or JAX); moved to the device once.
      beta: KL weight, scalar or [K].
      model: The model.
      epochs: Passes over the data.
      batch_size: Examples per step.
      learning_rate: Adam step size.
      loss_fn: Per-example loss; defaults to :func:`make_example_loss`.
      kl_warmup_epochs: KL warm-up length (see :func:`train_epoch`).
      name: Name used in log lines and errors.
      hooks: Called in order after each epoch with an :class:`Epoch`; the
        finiteness check always runs first, checkpoint saving last. The
        default logs progress; ``()`` trains silently.
      callback: Shorthand hook ``callback(epoch, means, seconds)``.
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

    Returns:
      Parameters, history [([K,] epochs)], final state, training seconds
      (excluding compilation) and compilation seconds.

    Raises:
      InvalidArgument: Bad batch size, epochs, key, or key/beta batch.
      NonFiniteLossError: A loss became NaN or infinite; names the epoch.
    """
    images = _as_images(images)
    check_args(images.shape[0], batch_size=batch_size, epochs=epochs)
    key = keys_lib.as_typed(jnp.asarray(key))
    beta = jnp.asarray(beta, images.dtype)
    if key.ndim > 1 or key.ndim != beta.ndim or (key.ndim and key.shape != beta.shape):
        raise rules.InvalidArgument(
            f"key {list(key.shape)} and beta {list(beta.shape)} must both be scalars or both "
            "[K] (one key and one beta per model)"
        )
    t0 = time.perf_counter()
    key, beta, images, state_sharding, batches, group_size = _place(
        mesh, key, beta, images, batch_size, group_size
    )
    epoch_fn = make_epoch_fn(
        model=model, batch_size=batch_size, learning_rate=learning_rate, loss_fn=loss_fn,
        batch_sharding=batches, kl_warmup_epochs=kl_warmup_epochs,
    )  # fmt: skip
    if key.ndim:
        epoch_fn = vmap_models(epoch_fn, group_size=group_size)
    init = functools.partial(init_state, model=model, learning_rate=learning_rate)
    state = jax.jit(init, out_shardings=state_sharding)(key, images[0])
    compiled = jax.jit(epoch_fn, donate_argnums=0).lower(state, images, beta).compile()
    compile_seconds = time.perf_counter() - t0

    history: list[LossTerms] = []
    if checkpointer is not None and checkpointer.latest_epoch() is not None:
        state, history = checkpointer.restore(state)
        if len(history) > epochs:
            raise CheckpointError(
                f"{name}: the checkpoint is at epoch {len(history)}, past --epochs={epochs}"
            )
        logging.info("%s: resumed from the checkpoint of epoch %d", name, len(history))
    all_hooks = [check_finite, *hooks]
    if callback is not None:
        all_hooks.append(lambda e: callback(e.epoch, e.means, e.seconds))
    if checkpointer is not None:
        all_hooks.append(save_checkpoints(checkpointer))
    first_epoch, train_seconds = len(history) + 1, 0.0
    for epoch in range(first_epoch, epochs + 1):
        t = time.perf_counter()
        state, means = compiled(state, images, beta)
        means = LossTerms(*sharding.local_copy(means))  # Waits for the epoch to finish.
        seconds = time.perf_counter() - t
        train_seconds += seconds
        history.append(means)
        for hook in all_hooks:
            hook(Epoch(name, epoch, epochs, means, seconds, state, history))
    if checkpointer is not None:
        checkpointer.wait()  # Saves overlap the next epochs; on return they are on disk.
    return TrainResult(
        state.params, stack_history(history), state, train_seconds, compile_seconds,
        epochs + 1 - first_epoch,
    )  # fmt: skip
