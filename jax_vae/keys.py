"""The key schedule: one tree of named streams, every key used once.

Every random choice of a run (initialization, shuffling, the VAE's
reparameterization noise, sampled scores) comes from one tree rooted at the
training seed. A node's children are ``fold_in(node, i)`` for distinct ``i``
(under JAX's default PRNG ``split(node, n)[i] == fold_in(node, i)``, so a split
names children the same way), so two paths never meet and no key is used twice::

    key(seed)
    └─ model m = fold_in(key(seed), model_id(name))  # ae 0, vae 1, others by name
       ├─ 0 TRAIN: ensemble member 0 (the single model)
       │  ├─ 0: init (params: 0, the VAE's init sample: 1)
       │  └─ 1: epoch 1 -> (0: epoch 2 ..., 1: shuffle, 2: steps -> step s -> example i)
       ├─ 1 SCORE: scoring of member 0
       │  ├─ 0 VAL, 1 TEST, 2 SYNTHETIC, 3 VALIDATION: one key per part
       │  │  └─ fold_in(part, i): image i of the part, whatever the chunking
       │  └─ 4 FIT: what a score fits on the training split (a classifier's training)
       │     └─ one child per component, by its label (fit_key)
       └─ 2 MEMBERS
          └─ i: member i >= 1, a node like m: (0 TRAIN, 1 SCORE) below it

A model's keys depend on the seed and its name alone, not on which other
models run, so a sweep that trains many seeds together reproduces each
``experiments.main --seed=S`` run, and the library reproduces both.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_vae import rules

TRAIN, SCORE, MEMBERS = 0, 1, 2
BUILTIN_MODEL_IDS = {"ae": 0, "vae": 1}
VAL, TEST, SYNTHETIC, VALIDATION = 0, 1, 2, 3  # VALIDATION: other classes' training images.
FIT = 4  # Under a scoring key: what the scores fit on the training split.


class ModelKeys(NamedTuple):
    """The training and scoring keys of one model (or [M] members, stacked)."""

    train: jax.Array
    score: jax.Array


class ScoreKeys(NamedTuple):
    """One key per scored part; image i of a part uses ``fold_in(part, i)``."""

    val: jax.Array
    test: jax.Array
    synthetic: jax.Array


def as_typed(key: jax.Array) -> jax.Array:
    """A typed key from a typed key or a legacy ``jax.random.PRNGKey`` ([..., 2] uint32).

    Raises:
      InvalidArgument: Neither kind of key.
    """
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise rules.InvalidArgument(
        f"key must be a jax.random.key (or a legacy PRNGKey), got {key.dtype}{list(key.shape)}"
    )


def model_id(name: str) -> int:
    """The branch of model ``name`` in the key tree: the built-in ``ae`` and ``vae`` 0 and 1,
    any other model's derived from its name alone (never 0 or 1), so registering a model
    never changes another model's keys."""
    if name in BUILTIN_MODEL_IDS:
        return BUILTIN_MODEL_IDS[name]
    return 2 + zlib.crc32(name.encode()) % (2**31 - 2)


def model_node(seed: int, name: str) -> jax.Array:
    """The node of model ``name`` under ``key(seed)``."""
    rules.seed("seed", seed)
    return jax.random.fold_in(jax.random.key(seed), model_id(name))


def model_keys(seed: int, name: str) -> ModelKeys:
    """The training and scoring keys of model ``name`` trained with ``seed``."""
    node = model_node(seed, name)
    return ModelKeys(jax.random.fold_in(node, TRAIN), jax.random.fold_in(node, SCORE))


def member_keys(seed: int, name: str, members: int) -> ModelKeys:
    """[members] training and scoring keys of an ensemble; member 0 is the single model.

    Args:
      seed: The training seed.
      name: The model's name.
      members: Ensemble size (>= 1).

    Returns:
      Stacked keys; ``member_keys(s, n, 1)[k][0]`` equals ``model_keys(s, n)[k]``.
    """
    rules.at_least("members", members, 1)
    node = model_node(seed, name)
    branch = jax.random.fold_in(node, MEMBERS)
    nodes = [node] + [jax.random.fold_in(branch, i) for i in range(1, members)]
    return ModelKeys(
        jnp.stack([jax.random.fold_in(n, TRAIN) for n in nodes]),
        jnp.stack([jax.random.fold_in(n, SCORE) for n in nodes]),
    )


def init_keys(train_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(init, epoch-1) keys of a training key."""
    init, epoch = jax.random.split(train_key)
    return init, epoch


def epoch_keys(epoch_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next epoch's key, shuffle, steps) of one epoch's key."""
    following, shuffle, steps = jax.random.split(epoch_key, 3)
    return following, shuffle, steps


def score_keys(score_key: jax.Array) -> ScoreKeys:
    """The per-part keys of a scoring key (vmap it for stacked keys)."""
    return ScoreKeys(*(jax.random.fold_in(score_key, part) for part in (VAL, TEST, SYNTHETIC)))


def validation_key(score_key: jax.Array) -> jax.Array:
    """The key of the other classes' training images a model is scored on (the validation
    tasks of a sweep's ``validation_images``; vmap it for stacked keys)."""
    return jax.random.fold_in(score_key, VALIDATION)


def image_keys(part_key: jax.Array, indices: jax.Array) -> jax.Array:
    """The keys of images ``indices`` of a scored part: a function of the index alone."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(part_key, indices)


def fit_key(score_key: jax.Array, label: str) -> jax.Array:
    """The key a score component (``label``, e.g. ``geom``) fits with on the training split,
    under a model's scoring key: derived from the label alone, so adding a score never
    changes another's key (vmap over stacked keys with ``in_axes=(0, None)``)."""
    return jax.random.fold_in(jax.random.fold_in(score_key, FIT), zlib.crc32(label.encode())
                              % 2**31)
