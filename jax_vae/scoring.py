"""Anomaly scores: per-example functions, vmapped, jitted and run in fixed-size chunks.

A score function has the signature ``score(params, x, key) -> scalar`` for one
image ``x``; higher means more anomalous. The registry (:mod:`jax_vae.registry`)
gives each model its scores. :func:`map_chunked` lifts any per-example function
over a dataset of any size with bounded memory (``jax.lax.map`` over chunks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.errors import ScopeParamShapeError

from jax_vae import data, rules, vocab
from jax_vae import keys as keys_lib
from jax_vae.losses import kl_divergence, reconstruction_nll, squared_error
from jax_vae.models import reparameterize
from jax_vae.sharding import local_copy
from jax_vae.vocab import VAE_SCORES

ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


class Parts(NamedTuple):
    """The three scored parts of a one-class split (images, or their scores)."""

    val: Any  # Held-out normals: they set the threshold.
    test: Any
    synthetic: Any  # Corrupted held-out normals (jax_vae.data.synthetic_anomalies).


def mean_squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Mean squared error of one example over its pixels."""
    return squared_error(x, x_hat) / x.size


def gaussian_blur_matrix(size: int, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """The [size, size] matrix that blurs one image axis with a Gaussian of ``sigma`` pixels.

    Rows are the normalized kernel (radius ``ceil(truncate * sigma)``) centred on
    each pixel, cut at the border (zero padding), so ``B @ image @ B.T`` equals
    ``scipy.ndimage.gaussian_filter(image, sigma, mode="constant")``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(np.ceil(truncate * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    blur = np.zeros((size, size), np.float32)
    for i in range(size):
        for offset, weight in zip(offsets, kernel, strict=True):
            if 0 <= i + offset < size:
                blur[i, i + offset] = weight
    return blur


def make_residual_error(
    smoothing: float = 0.0, image_shape: tuple[int, int, int] | None = None
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The reconstruction error of one image: MSE, or MSE of the blurred residual.

    Args:
      smoothing: Gaussian sigma in pixels applied to the residual ``x - x_hat``
        (each channel as an image) before squaring; 0 gives the plain mean
        squared error. Blurring averages out the scattered one-pixel errors
        along a normal digit's edges and keeps the coherent, stroke-sized
        errors where an anomaly differs from what the model can reconstruct.
      image_shape: (height, width, channels) of the flattened images; None: a
        square grayscale image.

    Returns:
      ``error(x, x_hat) -> scalar`` for flattened images.
    """
    rules.smoothing("smoothing", smoothing, min(image_shape[:2]) if image_shape else 28)
    if smoothing == 0:
        return mean_squared_error
    blur = _residual_blur(smoothing, image_shape)
    return lambda x, x_hat: jnp.mean(jnp.square(blur(x - x_hat)))


def anomaly_map(
    smoothing: float = 0.0, image_shape: tuple[int, int, int] = (28, 28, 1)
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-pixel anomaly map of one image: its squared residual, blurred as the score of
    the same ``smoothing`` blurs it (the map's mean is that score).

    Returns:
      ``anomaly_map(x, x_hat) -> [height, width, channels]`` for flattened images.
    """
    rules.smoothing("smoothing", smoothing, min(image_shape[:2]))
    blur = _residual_blur(smoothing, image_shape) if smoothing else (lambda r: r)
    return lambda x, x_hat: jnp.square(blur(x - x_hat)).reshape(image_shape)


def _residual_blur(
    smoothing: float, image_shape: tuple[int, int, int] | None
) -> Callable[[jax.Array], jax.Array]:
    """Blurs a flattened residual, each channel as an image; None: one square channel."""

    def blur(residual: jax.Array) -> jax.Array:
        size = residual.size
        height, width, channels = image_shape or (int(round(size**0.5)),) * 2 + (1,)
        if height * width * channels != size:
            raise ValueError(f"smoothing needs square images or an image_shape, got {size} "
                             "pixels")  # fmt: skip
        rows = jnp.asarray(gaussian_blur_matrix(height, smoothing), residual.dtype)
        cols = rows if width == height else jnp.asarray(
            gaussian_blur_matrix(width, smoothing), residual.dtype)  # fmt: skip
        residual = residual.reshape(height, width, channels)
        if channels == 1:  # As it always was (and MNIST's numbers stay bit for bit).
            return rows @ residual[..., 0] @ cols.T
        return jax.vmap(lambda r: rows @ r @ cols.T, in_axes=2, out_axes=2)(residual)

    return blur


def autoencoder_reconstruct(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """The autoencoder's reconstruction of one image."""
    return module.apply


def vae_reconstruct(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """A VAE's deterministic reconstruction of one image: decoded at z = posterior mean."""

    def reconstruct(params, x):
        mean, _ = module.apply(params, x, method="encode")
        return module.apply(params, mean, method="decode")

    return reconstruct


def reconstruction_score(
    reconstruct: Callable[[Any, jax.Array], jax.Array],
    *,
    smoothing: float = 0.0,
    image_shape: tuple[int, int, int] | None = None,
) -> ScoreFn:
    """The per-example reconstruction error (MSE, or of the blurred residual) as a score.

    Args:
      reconstruct: ``reconstruct(params, x) -> x_hat`` for one image.
      smoothing: Gaussian sigma in pixels of :func:`make_residual_error`; 0: MSE.
      image_shape: (height, width, channels) of the flattened images, for the blur.

    Returns:
      ``score(params, x, key) -> scalar``; the key is unused (deterministic).
    """
    error = make_residual_error(smoothing, image_shape)

    def score(params, x, key):
        del key  # Deterministic.
        return error(x, reconstruct(params, x))

    return score


def shifted_images(x: jax.Array, image_shape: tuple[int, int, int], shifts: int = 1) -> jax.Array:
    """The ``(2 * shifts + 1) ** 2`` copies of one flat image shifted by up to ``shifts``
    pixels in each direction (itself included); pixels shifted in repeat the edge."""
    height, width, _ = image_shape
    padded = jnp.pad(x.reshape(image_shape), ((shifts, shifts), (shifts, shifts), (0, 0)),
                     mode="edge")  # fmt: skip
    offsets = range(2 * shifts + 1)
    return jnp.stack([padded[dy : dy + height, dx : dx + width].reshape(-1)
                      for dy in offsets for dx in offsets])  # fmt: skip


def shift_score(
    reconstruct: Callable[[Any, jax.Array], jax.Array],
    *,
    smoothing: float = 0.0,
    image_shape: tuple[int, int, int],
    shifts: int = 1,
) -> ScoreFn:
    """The minimum, over the image's shifts by up to ``shifts`` pixels, of the shifted image's
    reconstruction error (:func:`make_residual_error`): an image that is normal but for its
    position scores as if centred.

    Returns:
      ``score(params, x, key) -> scalar``; the key is unused (deterministic).
    """
    rules.at_least("shifts", shifts, 1)
    error = make_residual_error(smoothing, image_shape)

    def score(params, x, key):
        del key  # Deterministic.
        copies = shifted_images(x, image_shape, shifts)
        return jnp.min(jax.vmap(lambda v: error(v, reconstruct(params, v)))(copies))

    return score


def knn_distance(point: jax.Array, bank: jax.Array, k: int) -> jax.Array:
    """The mean squared Euclidean distance of ``point`` [D] to its ``k`` nearest rows of
    ``bank`` [N, D] (as ``|a|^2 - 2 a.b + |b|^2``: one matrix product for a batch)."""
    squared = jnp.sum(jnp.square(bank), axis=1) - 2 * bank @ point + jnp.sum(jnp.square(point))
    return -jnp.mean(jax.lax.top_k(-jnp.maximum(squared, 0.0), k)[0])


def vae_score_fn(
    module: nn.Module,
    *,
    vae_score: str = "mean",
    mc_samples: int = 10,
    likelihood: str = "gaussian",
    smoothing: float = 0.0,
) -> ScoreFn:
    """The per-example anomaly score of a VAE.

    Args:
      module: A VAE (``encode`` -> mean, logvar; ``decode_logits``).
      vae_score: ``mean`` -- MSE of the reconstruction at z = posterior mean
        (deterministic); ``mc`` -- mean MSE over ``mc_samples``
        reparameterized draws; ``elbo`` -- negative ELBO (reconstruction term
        + KL, beta = 1) averaged over ``mc_samples`` draws; ``iwae`` -- the
        negative importance-weighted bound ``-log mean_k p(x|z_k) p(z_k) /
        q(z_k|x)`` over ``mc_samples`` draws (tighter than the ELBO; equal to
        it in expectation for one draw).
      mc_samples: Draws for ``mc``, ``elbo`` and ``iwae``.
      likelihood: The decoder's likelihood for ``elbo`` and ``iwae``:
        ``gaussian`` (-log p(x|z) = summed squared error, as in training) or
        ``bernoulli`` (binary cross-entropy).
      smoothing: For the reconstruction scores (``mean``, ``mc``): the
        Gaussian sigma in pixels of :func:`make_residual_error`; 0 is the
        plain MSE. Likelihood scores (``elbo``, ``iwae``) reject it.

    Returns:
      ``score(params, x, key) -> scalar`` for one image; ``key`` is unused by
      deterministic scores.
    """
    rules.choice("vae_score", vae_score, VAE_SCORES)
    rules.at_least("mc_samples", mc_samples, 1)
    rules.choice("likelihood", likelihood, vocab.LIKELIHOODS)
    rules.smoothing_needs_reconstruction("smoothing", smoothing, vae_score)
    image_shape = getattr(module, "image_shape", None)
    if vae_score == "mean":
        return reconstruction_score(vae_reconstruct(module), smoothing=smoothing,
                                    image_shape=image_shape)  # fmt: skip
    error = make_residual_error(smoothing, image_shape)

    def per_draw(params, x, mean, logvar, key):
        z = reparameterize(key, mean, logvar)
        logits = module.apply(params, z, method="decode_logits")
        if vae_score == "mc":
            return error(x, jax.nn.sigmoid(logits))
        nll = reconstruction_nll(x, logits, likelihood)
        if vae_score == "elbo":
            return nll + kl_divergence(mean, logvar)
        # log w = log p(x|z) + log p(z) - log q(z|x); the Gaussian constants cancel.
        log_prior = -0.5 * jnp.sum(jnp.square(z))
        log_posterior = -0.5 * jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar) + logvar)
        return -nll + log_prior - log_posterior

    def sampled_score(params, x, key):
        mean, logvar = module.apply(params, x, method="encode")
        draws = jax.vmap(per_draw, in_axes=(None, None, None, None, 0))(
            params, x, mean, logvar, jax.random.split(key, mc_samples)
        )
        if vae_score == "iwae":
            return -(jax.nn.logsumexp(draws) - jnp.log(mc_samples))
        return jnp.mean(draws)

    return sampled_score


@functools.partial(jax.jit, static_argnums=0, static_argnames=("batch_size", "stacked"))
def _map(fn: Callable, params: Any, images: jax.Array, part_key: jax.Array, *,
         batch_size: int, stacked: bool) -> Any:  # fmt: skip
    # jit's cache is keyed on the function, so the validation, test and synthetic parts of
    # every model reuse one program per size.
    def one_model(params, part_key):
        # Image i's key depends on its index alone, so scores do not change with the
        # batch size (jax_vae.keys).
        image_keys = keys_lib.image_keys(part_key, jnp.arange(images.shape[0]))
        return jax.lax.map(lambda xk: fn(params, *xk), (images, image_keys), batch_size=batch_size)

    return jax.vmap(one_model)(params, part_key) if stacked else one_model(params, part_key)


def map_chunked(
    fn: Callable[[Any, jax.Array, jax.Array], Any],
    params: Any,
    images: np.ndarray | jax.Array,
    *,
    key: jax.Array | None = None,
    chunk_size: int = 2048,
    stacked: bool = False,
) -> Any:
    """Applies a per-example function to every image, ``jax.lax.map`` over chunks.

    Args:
      fn: ``fn(params, x, key) -> pytree`` for one image.
      params: Model parameters; with ``stacked``, K models' parameters stacked
        on a leading axis.
      images: [N, ...] images (host or device).
      key: PRNG key of the scored part; image i gets ``fold_in(key, i)``
        (:func:`jax_vae.keys.image_keys`), whatever the chunk size. A fixed key
        is used when None (deterministic functions ignore it). With
        ``stacked``, [K] keys: model k sees exactly the keys it would alone.
      chunk_size: (model, image) pairs evaluated at once: with K stacked
        models, ``chunk_size // K`` images a step, so device memory stays
        bounded however many models are scored together.
      stacked: Evaluate K models at once (vmapped over the model axis).

    Returns:
      The outputs stacked over the N images ([K, N, ...] when ``stacked``), as
      NumPy arrays.

    Raises:
      InvalidArgument: A bad chunk size, or parameters stacked for
        K models without ``stacked=True``.
    """
    images = data.as_images(images)  # uint8 scaled, floats checked, [N, H, W] flattened.
    n = images.shape[0]
    rules.at_least("chunk_size", chunk_size, 1)
    models = jax.tree.leaves(params)[0].shape[0] if stacked else 1
    if key is None:
        key = jax.random.key(0)
        if stacked:
            key = jnp.stack([key] * models)
    key = keys_lib.as_typed(jnp.asarray(key))
    if n == 0:  # E.g. a folder without test images: empty outputs, shaped as for one image.
        one = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
        one_step = functools.partial(_map, fn, batch_size=1, stacked=stacked)
        shapes = jax.eval_shape(one_step, params, one, key)
        return jax.tree.map(lambda s: np.zeros((*s.shape[:stacked], 0, *s.shape[stacked + 1:]),
                                               s.dtype), shapes)  # fmt: skip
    batch_size = min(n, max(1, chunk_size // models))
    try:
        out = _map(fn, params, jnp.asarray(images), key, batch_size=batch_size, stacked=stacked)
    except ScopeParamShapeError:
        if stacked:
            raise
        raise rules.InvalidArgument(
            "the parameters do not fit the model: parameters of K models stacked on a "
            "leading axis need stacked=True (and [K] keys)"
        ) from None
    return jax.tree.map(np.asarray, local_copy(out))


def score(
    params: Any,
    images: np.ndarray | jax.Array,
    *,
    score_fn: ScoreFn,
    key: jax.Array | None = None,
    chunk_size: int = 2048,
    stacked: bool = False,
) -> np.ndarray:
    """Per-image anomaly scores [N] (or [K, N] when ``stacked``), via :func:`map_chunked`."""
    return map_chunked(score_fn, params, images, key=key, chunk_size=chunk_size, stacked=stacked)


@functools.lru_cache(maxsize=64)
def stack_scores(score_fns: tuple[ScoreFn, ...]) -> ScoreFn:
    """One per-example function giving every score as an array [S].

    Scoring S variants (e.g. smoothings) of the same model in one program lets
    XLA compute the shared reconstruction once instead of S times. The same
    functions give the same function (its compiled programs are reused).
    """

    def stacked(params, x, key):
        return jnp.stack([fn(params, x, key) for fn in score_fns])

    return stacked


def score_parts(
    params: Any,
    images: Parts,
    *,
    score_fn: ScoreFn,
    key: jax.Array,
    chunk_size: int = 2048,
    stacked: bool = False,
) -> Parts:
    """Scores of the validation, test and synthetic images of a split.

    Args:
      params: Model parameters ([K] stacked with ``stacked``).
      images: The parts' images.
      score_fn: Per-example score.
      key: The model's scoring key ([K] with ``stacked``); each part gets its
        own key (:func:`jax_vae.keys.score_keys`).
      chunk_size: Images per compiled call.
      stacked: K models at once.

    Returns:
      Scores per part, [N] or [K, N] (with a trailing axis for stacked scores).
    """
    part_keys = (jax.vmap(keys_lib.score_keys) if stacked else keys_lib.score_keys)(key)
    return Parts(
        *(
            score(params, part, score_fn=score_fn, key=k, chunk_size=chunk_size, stacked=stacked)
            for part, k in zip(images, part_keys, strict=True)
        )
    )
