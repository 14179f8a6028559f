"""On-device training: one pure function of (key, images, hparams), in the style of optax.

:func:`make_train` builds ``train(key, images, hparams) -> (state, history)``
for a model of :mod:`jax_vae.registry` and any optax optimizer. ``hparams`` is
a pytree of scalars (``beta``, the ``learning_rate`` of an optimizer built with
``optax.inject_hyperparams``, ``kl_warmup_epochs``, any field your loss reads),
so every leaf can be a vmapped axis::

    adam = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    trainer = train.make_train(registry.build("vae"), tx=adam, epochs=30)
    state, history = jax.jit(jax.vmap(trainer, in_axes=(0, None, 0)))(
        keys, images, {"beta": jnp.array([1.0, 4.0]), "learning_rate": jnp.array([1e-3, 3e-4])})

An epoch is one ``jax.lax.scan`` over batches gathered inside the step (no
permuted copy of the training set). Everything here is pure; the host driver
(:mod:`jax_vae.train.driver`) runs the same ``trainer.init`` and ``trainer.epoch``.
Keys follow :mod:`jax_vae.keys`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jax_vae import data, rules, spec
from jax_vae import keys as keys_lib

Terms = dict[str, Any]


@functools.lru_cache(maxsize=16)
def adam(learning_rate: float, *, injected: bool = False) -> optax.GradientTransformation:
    """Adam, one object per setting (optax transformations are pure), so that trainings
    with equal models and settings reuse one compiled program. ``injected``: the rate is
    read from the hyperparameters (``optax.inject_hyperparams``), a vmapped axis."""
    if injected:
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    return optax.adam(learning_rate)


ADAM = adam(spec.LEARNING_RATE)  # The seed spec's optimizer, the default everywhere.


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from one epoch to the next."""

    params: Any
    opt_state: optax.OptState
    key: jax.Array  # The epoch key: split every epoch, never used again.
    epoch: jax.Array


def inject(opt_state: optax.OptState, hparams: Mapping[str, Any]) -> optax.OptState:
    """Writes the hyperparameters the optimizer injects (e.g. ``learning_rate``) into its state.

    Raises:
      ValueError: ``hparams`` has ``learning_rate`` but the optimizer does not
        inject it (build it with ``optax.inject_hyperparams``).
    """
    injected = getattr(opt_state, "hyperparams", None)
    if injected is None:
        if "learning_rate" in hparams:
            raise ValueError(
                "hparams['learning_rate'] needs an optimizer built with "
                "optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)"
                "(learning_rate=1e-3)"
            )
        return opt_state
    values = {k: jnp.asarray(hparams[k], jnp.result_type(v)) for k, v in injected.items()
              if k in hparams}  # fmt: skip
    return opt_state._replace(hyperparams={**injected, **values})


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per epoch; the last one is partial (masked) when needed."""
    return math.ceil(num_examples / batch_size)


def check_args(n: int, *, batch_size: int, epochs: int) -> None:
    """The batch size and epoch rules of a run on ``n`` training images.

    Raises:
      InvalidArgument: Naming ``epochs`` or ``batch_size``.
    """
    rules.at_least("epochs", epochs, 1)
    rules.number("batch_size", batch_size, low=1, high=n, integer=True,
                 note=f" (the training set has {n} images)")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """A training run as pure functions; calling it trains all epochs in one ``scan``.

    Build it with :func:`make_train`. ``trainer(key, images, hparams)`` traces,
    jits and vmaps; :func:`train` drives ``init`` and ``epoch`` from the host.

    Attributes:
      model: A :class:`jax_vae.registry.Model` (anything with ``init(key, x)``
        and a per-example ``loss(params, x, key, hparams) -> terms``).
      tx: The optax optimizer.
      epochs: Passes over the data.
      batch_size: Examples per step.
      batch_sharding: Optional sharding of each ``[batch, ...]`` batch, e.g.
        the batch axis split over devices (data parallel).
      microbatches: Slices each batch's gradient is accumulated over, one after another
        (``batch_size`` must divide by it): the same update up to float rounding, with the
        memory of one slice's activations (1: the whole batch at once).
    """

    model: Any
    tx: optax.GradientTransformation
    epochs: int
    batch_size: int
    batch_sharding: jax.sharding.Sharding | None = None
    microbatches: int = 1

    def init(self, key: jax.Array, images: jax.Array, hparams: Mapping[str, Any]) -> TrainState:
        """The epoch-0 state of one model from its training key (:mod:`jax_vae.keys`)."""
        check_args(images.shape[0], batch_size=self.batch_size, epochs=self.epochs)
        return self.init_from(key, images[0], hparams)

    def init_from(self, key: jax.Array, example: jax.Array, hparams: Mapping[str, Any]
                  ) -> TrainState:  # fmt: skip
        """:meth:`init` from the first training image alone: compiled, one program serves
        training sets of every size (initializing is slow to compile: random weights)."""
        init_key, epoch_key = keys_lib.init_keys(keys_lib.as_typed(key))
        params = self.model.init(init_key, example)
        opt_state = inject(self.tx.init(params), hparams)
        return TrainState(params, opt_state, epoch_key, jnp.zeros((), jnp.int32))

    def epoch(
        self, state: TrainState, images: jax.Array, hparams: Mapping[str, Any],
        count: jax.Array | None = None,
    ) -> tuple[TrainState, Terms]:  # fmt: skip
        """One pass over every training image: :meth:`epoch_sums`, and the mean loss terms.

        With ``count``, the means can differ from those of ``images[:n]`` in the
        last bit (a longer sum); :func:`train` sums only the real steps instead.
        """
        state, sums = self.epoch_sums(state, images, hparams, count)
        n = images.shape[0] if count is None else count
        return state, {name: jnp.sum(s) / n for name, s in sums.items()}

    def epoch_sums(
        self, state: TrainState, images: jax.Array, hparams: Mapping[str, Any],
        count: jax.Array | None = None,
    ) -> tuple[TrainState, Terms]:  # fmt: skip
        """One pass over every training image, in a fresh random order.

        The permutation is padded to whole batches; padded rows carry weight 0,
        so each real image counts once and the partial last batch averages only
        over its real images. Each step gathers its batch from ``images``.

        Args:
          state: The state after the previous epoch.
          images: Training images [N, features].
          hparams: The hyperparameters the loss and optimizer read.
          count: None: all N images are real. A traced int n <= N: only the
            first n are, the rest pad (``pad_to`` of :func:`train`); the state
            is what ``images[:n]`` trains to, bit for bit, while one compiled
            program serves every n that pads to N (:func:`check_padding`).

        Returns:
          The new state and each loss term summed over each step's real images
          ([steps]; 0 in steps of padding only).
        """
        size, batch_size = images.shape[0], self.batch_size
        steps = num_batches(size, batch_size)
        key, perm_key, step_key = keys_lib.epoch_keys(state.key)
        n = size if count is None else count
        order = jnp.pad(permutation(perm_key, n, size), (0, steps * batch_size - size))
        weights = (jnp.arange(steps * batch_size) < n).astype(images.dtype)
        # The loss sees the 1-based epoch, for schedules such as the KL warm-up.
        hparams = {**hparams, "epoch": state.epoch + 1}
        batched_loss = jax.vmap(self.model.loss, in_axes=(None, 0, 0, None))

        def batch_objective(params, x, w, k):
            terms = batched_loss(params, x, jax.random.split(k, batch_size), hparams)
            sums = {name: jnp.sum(w * t) for name, t in terms.items()}
            return sums["total"] / jnp.sum(w), sums

        def summed_objective(params, x, w, keys):  # One microbatch: the weighted sums.
            sums = {name: jnp.sum(w * t) for name, t in
                    batched_loss(params, x, keys, hparams).items()}  # fmt: skip
            return sums["total"], sums

        def accumulated_grads(params, index, w, k):
            """The batch's gradient from ``microbatches`` slices of it, one after another
            (each example with the key it has in the whole batch): the same gradient up to
            float rounding, with the activations of one slice alive at a time; a partial
            last batch computes only its slices that hold real images."""
            m = self.microbatches
            split = lambda a: a.reshape(m, batch_size // m, *a.shape[1:])  # noqa: E731

            def one(grads, part):
                index, w, keys = part
                g, sums = jax.grad(summed_objective, has_aux=True)(params, images[index], w,
                                                                   keys)  # fmt: skip
                return jax.tree.map(jnp.add, grads, g), sums

            def real(grads, part):  # A slice of padding only adds zeros: skipped.
                empty = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype),
                                     jax.eval_shape(one, grads, part)[1])  # fmt: skip
                return jax.lax.cond(jnp.any(part[1] > 0), one, lambda g, _: (g, empty),
                                    grads, part)  # fmt: skip

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, sums = jax.lax.scan(real, zeros, (split(index), split(w),
                                                    split(jax.random.split(k, batch_size))))
            total = jnp.sum(w)
            return jax.tree.map(lambda g: g / total, grads), jax.tree.map(jnp.sum, sums)

        def step(carry, batch):
            params, opt_state = carry
            index, w, k = batch
            if self.microbatches > 1:
                grads, sums = accumulated_grads(params, index, w, k)
            else:
                x = images[index]
                if self.batch_sharding is not None:
                    x = jax.lax.with_sharding_constraint(x, self.batch_sharding)
                grads, sums = jax.grad(batch_objective, has_aux=True)(params, x, w, k)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), sums

        def padded_step(carry, batch):  # Steps past the real images (padding only): skipped.
            zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype),
                                 jax.eval_shape(step, carry, batch)[1])  # fmt: skip
            return jax.lax.cond(batch[1][0] > 0, step, lambda c, _: (c, zeros), carry, batch)

        (params, opt_state), sums = jax.lax.scan(
            step if count is None else padded_step,
            (state.params, state.opt_state),
            (order.reshape(steps, batch_size), weights.reshape(steps, batch_size),
             jax.random.split(step_key, steps)),
        )  # fmt: skip
        return state.replace(params=params, opt_state=opt_state, key=key,
                             epoch=state.epoch + 1), sums  # fmt: skip

    def __call__(
        self, key: jax.Array, images: jax.Array, hparams: Mapping[str, Any] | None = None,
        count: jax.Array | None = None,
    ) -> tuple[TrainState, Terms]:
        """All epochs as one pure function: the final state and the history [epochs].

        ``count``: as in :meth:`epoch_sums` (images padded to one size, e.g. to
        vmap over classes, with the number of real ones per class).
        """
        hparams = {**self.model.hparams, **(hparams or {})}
        images = device_images(images)
        state = self.init(key, images, hparams)
        return jax.lax.scan(lambda s, _: self.epoch(s, images, hparams, count), state,
                            length=self.epochs)  # fmt: skip


def sort_rounds(n: int) -> int:
    """The sorting rounds of ``jax.random.permutation`` for n items (its own static rule)."""
    return int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))


def check_padding(n: int, pad_to: int) -> None:
    """Whether ``n`` training images can be padded to ``pad_to`` rows (:meth:`Trainer.epoch_sums`).

    Raises:
      ValueError: ``pad_to`` is below n, or needs another number of sorting
        rounds than n (:func:`sort_rounds`; :func:`padded_sizes` avoids both).
    """
    if pad_to < n or sort_rounds(pad_to) != sort_rounds(n):
        raise ValueError(f"pad_to={pad_to} cannot pad {n} training images (it must be at least "
                         "n and within the same sort_rounds)")


def padded_sizes(sizes: Sequence[int]) -> dict[int, int]:
    """Training-set sizes -> the size each pads to, so that one compiled epoch serves them all:
    the largest size of those with the same :func:`sort_rounds` (one group for any sizes
    between 1,626 and 2.7 million, e.g. every class of MNIST)."""
    largest: dict[int, int] = {}
    for n in sizes:
        largest[sort_rounds(n)] = max(largest.get(sort_rounds(n), 0), n)
    return {n: largest[sort_rounds(n)] for n in sizes}


def permutation(key: jax.Array, n: int | jax.Array, size: int) -> jax.Array:
    """``jax.random.permutation(key, n)`` in the first n of ``size`` entries.

    With a traced ``n`` the shape is ``size`` whatever n is, so one program
    serves every n; the first n entries equal ``jax.random.permutation(key, n)``
    bit for bit (JAX's sort-based shuffle, with the padding sorted last) when n
    needs as many sorting rounds as ``size`` (:func:`sort_rounds`; true for any
    n between 1,626 and 2.7 million). The other entries are the padding n..size-1,
    in some order.
    """
    if isinstance(n, int) and n == size:
        return jax.random.permutation(key, n)
    x = jnp.arange(size)
    pad = x >= n
    for _ in range(sort_rounds(size)):
        key, sub = jax.random.split(key)
        bits = jax.random.bits(sub, (size,), jnp.uint32)
        pad, _, x = jax.lax.sort((pad, bits, x), num_keys=2, is_stable=True)
    return x


def make_train(
    model: Any,
    *,
    tx: optax.GradientTransformation | None = None,
    epochs: int = spec.EPOCHS,
    batch_size: int = spec.BATCH_SIZE,
    batch_sharding: jax.sharding.Sharding | None = None,
    microbatches: int = 1,
) -> Trainer:
    """The training run of ``model`` as a pure function ``train(key, images, hparams)``.

    Args:
      model: A :class:`jax_vae.registry.Model` (``registry.build("vae")``).
      tx: Any optax optimizer; default Adam with learning rate 1e-3 (the seed
        spec). Built with ``optax.inject_hyperparams``, its hyperparameters
        (e.g. ``learning_rate``) are read from ``hparams`` and can be swept.
      epochs: Passes over the data.
      batch_size: Examples per step.
      batch_sharding: Sharding of each batch (data parallel); None: none.
      microbatches: Accumulate each batch's gradient over this many slices of it (less
        memory; see :class:`Trainer`).

    Returns:
      A :class:`Trainer`: ``trainer(key, images [N, ...], hparams)`` ->
      ``(state, history)``, with ``history`` the per-epoch mean of each loss
      term; ``hparams`` missing a model hyperparameter take its default.
    """
    if microbatches < 1 or batch_size % microbatches:
        raise rules.InvalidArgument(f"microbatches must divide batch_size {batch_size}, got "
                                    f"{microbatches}")  # fmt: skip
    return Trainer(model, tx or ADAM, epochs, batch_size, batch_sharding, microbatches)


def state_template(init: Callable[..., TrainState], key: jax.Array, *args: Any) -> TrainState:
    """A state shaped as ``init(key, *args)``'s, without running or compiling ``init``: zeros,
    and ``key`` as the key (the same shape and PRNG implementation). The target of a
    checkpoint restore, which reads only structure, shapes and dtypes (random initialization
    is slow to compile: 1.6 s of a VAE detector's 2.5 s load, with XLA's defaults)."""
    shapes = jax.eval_shape(init, key, *args)
    zeros = functools.partial(jax.tree.map, lambda s: jnp.zeros(s.shape, s.dtype))
    return TrainState(zeros(shapes.params), zeros(shapes.opt_state), key, zeros(shapes.epoch))


def stack_history(history: list[Terms]) -> Terms:
    """Per-epoch means, one dict per epoch, as arrays [..., epochs]."""
    return {name: np.stack([h[name] for h in history], axis=-1) for name in history[0]}


def device_images(images: Any) -> jax.Array:
    """Concrete images through :func:`jax_vae.data.as_images` (uint8 scaled, floats checked
    to be in [0, 1], [N, H, W(, C)] flattened); traced ones (under jit) are only flattened."""
    if isinstance(images, jax.core.Tracer):
        if images.ndim < 2:
            raise rules.InvalidArgument(f"images must be [N, ...], got shape {images.shape}")
        return images.reshape(images.shape[0], -1)
    return jnp.asarray(data.as_images(images))


def default_group_size(backend: str | None = None) -> int | None:
    """Models vmapped together by default: all on accelerators, pairs on CPU.

    On a GPU or TPU one small model leaves the chip idle, so vmapping all K
    fills it. On a CPU the matmuls are already compute-bound and K models'
    weights and Adam moments stop fitting in cache: measured on a 2-core CPU,
    vmapping all 16 costs 1.3x 16 single trainings, pairs 1.0x.
    """
    return 2 if (backend or jax.default_backend()) == "cpu" else None


def vmap_models(epoch_fn: Callable, *, group_size: int | None = None) -> Callable:
    """Lifts ``epoch(state, images, hparams, count)`` to K stacked states and hparams.

    Args:
      epoch_fn: The single-model epoch function (:meth:`Trainer.epoch`).
      group_size: Models vmapped together (``jax.lax.map`` runs the groups in
        sequence); None picks :func:`default_group_size`, 0 vmaps all.

    Returns:
      ``epoch(states[K], images, hparams[K], count=None) -> (states[K], terms[K])``.
    """
    vmapped = jax.vmap(epoch_fn, in_axes=(0, None, 0, None))
    group_size = default_group_size() if group_size is None else group_size
    if not group_size:
        return vmapped

    def grouped(states, images, hparams, count=None):
        if group_size >= states.epoch.shape[0]:
            return vmapped(states, images, hparams, count)
        return jax.lax.map(lambda sh: epoch_fn(sh[0], images, sh[1], count), (states, hparams),
                           batch_size=group_size)  # fmt: skip

    return grouped


