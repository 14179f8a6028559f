"""A self-supervised transform classifier (GEOM: Golan & El-Yaniv, NeurIPS 2018; GOAD:
Bergman & Hoshen, ICLR 2020), the ``geom`` score's model.

A classifier learns, from the training normals alone, which of a fixed set of geometric
transforms was applied to an image. On an image like the normals it recognizes every
transform; on an anomaly it is unsure. An image's score is the classifier's mean negative
log-likelihood of the right transform over all of them::

    score(x) = -1/T * sum_t log p(t | transform_t(x))

The transforms are GEOM's: a horizontal flip or not, a shift by a quarter of the image
down, up or none, the same across, and a rotation by 0, 90, 180 or 270 degrees (72; on
images that are not square, rotations by 0 and 180 only: 36). Shifts wrap around
(``jnp.roll``), so no pixel is lost. The classifier is the seed spec's encoder width, an
MLP of 400 ReLU units, trained with the library's trainer (:func:`jax_vae.train.make_train`:
Adam 1e-3, batch 128, :data:`EPOCHS` epochs, each image under a transform drawn afresh at
every step), so training is one pure function of a key and the images and vmaps over models.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jax_vae import spec

EPOCHS = 60  # The classifier's epochs (the benchmarks' models train for 60).
SHIFT = 0.25  # Shifts: a quarter of the image's height or width, as GEOM's 8 of 32 pixels.
SEP = "."  # The fitted parameters' flat names: "Dense_0.kernel".


def count(image_shape: Sequence[int]) -> int:
    """The number of transforms of images of ``image_shape`` (height, width, channels)."""
    return 2 * 3 * 3 * (4 if image_shape[0] == image_shape[1] else 2)


def transform(image: jax.Array, index: jax.Array) -> jax.Array:
    """Transform ``index`` (traced or not) of one image [H, W, C]: index = ((flip * 3 + down)
    * 3 + across) * rotations + rotation, with down/across 0: none, 1: +, 2: - a quarter."""
    height, width = image.shape[:2]
    rotations = count(image.shape) // 18
    index = jnp.asarray(index)
    rotation, rest = index % rotations, index // rotations
    across, rest = rest % 3, rest // 3
    down, flip = rest % 3, rest // 3
    image = jnp.where(flip == 1, image[:, ::-1], image)
    steps = jnp.array([0, 1, -1])
    image = jnp.roll(image, steps[down] * round(SHIFT * height), axis=0)
    image = jnp.roll(image, steps[across] * round(SHIFT * width), axis=1)
    if rotations == 2:
        return jnp.where(rotation == 1, image[::-1, ::-1], image)
    return jax.lax.switch(rotation, [functools.partial(jnp.rot90, image, k) for k in range(4)])


class Classifier(nn.Module):
    """Flattened image -> hidden ReLU layers -> one logit per transform."""

    transforms: int
    hidden_dims: Sequence[int] = spec.HIDDEN_DIMS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.transforms)(x)


@dataclasses.dataclass(frozen=True)
class Task:
    """The classifier as the trainer's model (``init`` and a per-example ``loss``)."""

    image_shape: tuple[int, int, int]

    @property
    def module(self) -> Classifier:
        return Classifier(count(self.image_shape))

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def init(self, key: jax.Array, x: jax.Array) -> Any:
        return self.module.init(key, x)

    def loss(self, params: Any, x: jax.Array, key: jax.Array, hparams: Any) -> dict:
        """The cross-entropy of one image under a transform drawn with ``key``."""
        index = jax.random.randint(key, (), 0, count(self.image_shape))
        image = transform(x.reshape(self.image_shape), index).reshape(-1)
        logits = self.module.apply(params, image)
        return {"total": -jax.nn.log_softmax(logits)[index]}


def fit(key: jax.Array, images: jax.Array, image_shape: Sequence[int], *,
        epochs: int = EPOCHS) -> dict[str, jax.Array]:  # fmt: skip
    """Trains the classifier on flattened training images [N, H*W*C] (floats in [0, 1]).

    Returns:
      Its parameters as a flat dict of arrays (``"Dense_0.kernel"``: what a score saves).
    """
    from jax_vae.train import core  # noqa: PLC0415  (train imports the scores' registry)

    task = Task(tuple(int(s) for s in image_shape))
    trainer = core.make_train(task, tx=core.ADAM, epochs=epochs,
                              batch_size=min(spec.BATCH_SIZE, images.shape[0]))  # fmt: skip
    state, _ = trainer(key, images, {})
    return traverse_util.flatten_dict(state.params, sep=SEP)


def score(fitted: dict[str, jax.Array], x: jax.Array, image_shape: Sequence[int]) -> jax.Array:
    """One flattened image's score: the mean negative log-likelihood of the right transform."""
    shape = tuple(int(s) for s in image_shape)
    params, n = traverse_util.unflatten_dict(dict(fitted), sep=SEP), count(shape)
    images = jax.vmap(transform, in_axes=(None, 0))(x.reshape(shape), jnp.arange(n))
    logits = Classifier(n).apply(params, images.reshape(n, -1))
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))
