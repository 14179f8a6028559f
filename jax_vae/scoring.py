"""Anomaly scores: per-example functions, vmapped, jitted and run in fixed-size chunks.

A score function has the signature ``score(params, x, key) -> scalar`` for one
image ``x`` [784]; higher means more anomalous. :func:`map_chunked` lifts any
such per-example function over a dataset of any size with bounded memory: it
compiles one program for one chunk shape and pads the last chunk.
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

from jax_vae import keys as keys_lib
from jax_vae import rules
from jax_vae.losses import kl_divergence, reconstruction_nll, squared_error
from jax_vae.models import VAE, reparameterize
from jax_vae.rules import VAE_SCORES
from jax_vae.sharding import local_copy

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


def make_residual_error(smoothing: float = 0.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The reconstruction error of one square image: MSE, or MSE of the blurred residual.

    Args:
      smoothing: Gaussian sigma in pixels applied to the residual ``x - x_hat``
        (as a ``side x side`` image) before squaring; 0 gives the plain mean
        squared error. Blurring averages out the scattered one-pixel errors
        along a normal digit's edges and keeps the coherent, stroke-sized
        errors where an anomaly differs from what the model can reconstruct.

    Returns:
      ``error(x, x_hat) -> scalar`` for flattened images.
    """
    rules.smoothing("smoothing", smoothing)
    if smoothing == 0:
        return mean_squared_error

    def blurred_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
        side = int(round(x.size**0.5))
        if side * side != x.size:
            raise ValueError(f"smoothing needs square images, got {x.size} pixels")
        blur = jnp.asarray(gaussian_blur_matrix(side, smoothing), x.dtype)
        residual = (x - x_hat).reshape(side, side)
        return jnp.mean(jnp.square(blur @ residual @ blur.T))

    return blurred_error


def make_reconstruct_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """Deterministic reconstruction of one image: the AE's output, or a VAE's at z = mean."""
    if not isinstance(model, VAE):
        return model.apply

    def vae_reconstruct(params, x):
        mean, _ = model.apply(params, x, method="encode")
        return model.apply(params, mean, method="decode")

    return vae_reconstruct


def make_score_fn(
    model: nn.Module,
    *,
    vae_score: str = "mean",
    mc_samples: int = 10,
    likelihood: str = "gaussian",
    smoothing: float = 0.0,
) -> ScoreFn:
    """The per-example anomaly score of a model.

    Args:
      model: An ``AutoEncoder`` (score: reconstruction MSE) or a ``VAE``.
      vae_score: For a VAE: ``mean`` -- MSE of the reconstruction at
        z = posterior mean (deterministic); ``mc`` -- mean MSE over
        ``mc_samples`` reparameterized draws; ``elbo`` -- negative ELBO
        (reconstruction term + KL, beta = 1) averaged over ``mc_samples``
        draws; ``iwae`` -- the negative importance-weighted bound
        ``-log mean_k p(x|z_k) p(z_k) / q(z_k|x)`` over ``mc_samples`` draws
        (tighter than the ELBO; equal to it in expectation for one draw).
      mc_samples: Draws for ``mc``, ``elbo`` and ``iwae``.
      likelihood: The decoder's likelihood for ``elbo`` and ``iwae``:
        ``gaussian`` (-log p(x|z) = summed squared error, as in training) or
        ``bernoulli`` (binary cross-entropy).
      smoothing: For the reconstruction scores (the AE's, ``mean`` and
        ``mc``): the Gaussian sigma in pixels of :func:`make_residual_error`;
        0 is the plain MSE. Likelihood scores (``elbo``, ``iwae``) reject it.

    Returns:
      ``score(params, x, key) -> scalar`` for one image; ``key`` is unused by
      deterministic scores.
    """
    rules.choice("vae_score", vae_score, VAE_SCORES)
    rules.at_least("mc_samples", mc_samples, 1)
    rules.choice("likelihood", likelihood, rules.LIKELIHOODS)
    error = make_residual_error(smoothing)
    if isinstance(model, VAE):
        rules.smoothing_needs_reconstruction("smoothing", smoothing, vae_score)
    reconstruct = make_reconstruct_fn(model)
    if not isinstance(model, VAE) or vae_score == "mean":

        def reconstruction_score(params, x, key):
            del key  # Deterministic.
            return error(x, reconstruct(params, x))

        return reconstruction_score

    def encode(params, x):
        return model.apply(params, x, method="encode")

    def decode_logits(params, z):
        return model.apply(params, z, method="decode_logits")

    def per_draw(params, x, mean, logvar, key):
        z = reparameterize(key, mean, logvar)
        logits = decode_logits(params, z)
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
        mean, logvar = encode(params, x)
        draws = jax.vmap(per_draw, in_axes=(None, None, None, None, 0))(
            params, x, mean, logvar, jax.random.split(key, mc_samples)
        )
        if vae_score == "iwae":
            return -(jax.nn.logsumexp(draws) - jnp.log(mc_samples))
        return jnp.mean(draws)

    return sampled_score


@functools.lru_cache(maxsize=64)
def _chunk_runner(fn: Callable, stacked: bool) -> Callable:
    # One jitted program per per-example function, reused across calls (e.g.
    # the validation and the test set), so each chunk shape compiles once.
    def run_chunk(params, chunk, part_key, start):
        # Image i's key depends on its index alone, so scores do not change with
        # the chunk size (jax_vae.keys).
        image_keys = keys_lib.image_keys(part_key, start + jnp.arange(chunk.shape[0]))
        return jax.vmap(fn, in_axes=(None, 0, 0))(params, chunk, image_keys)

    if stacked:  # K models: stacked params and one key per model.
        run_chunk = jax.vmap(run_chunk, in_axes=(0, None, 0, None))
    return jax.jit(run_chunk)


def map_chunked(
    fn: Callable[[Any, jax.Array, jax.Array], Any],
    params: Any,
    images: np.ndarray | jax.Array,
    *,
    key: jax.Array | None = None,
    chunk_size: int = 2048,
    stacked: bool = False,
) -> Any:
    """Applies a per-example function to every image, in fixed-size chunks.

    Args:
      fn: ``fn(params, x, key) -> pytree`` for one image.
      params: Model parameters; with ``stacked``, K models' parameters stacked
        on a leading axis.
      images: [N, 784] images (host or device).
      key: PRNG key of the scored part; image i gets ``fold_in(key, i)``
        (:func:`jax_vae.keys.image_keys`), whatever the chunk size. A fixed key
        is used when None (deterministic functions ignore it). With
        ``stacked``, [K] keys: model k sees exactly the keys it would alone.
      chunk_size: Images per compiled call; bounds the memory of one call.
      stacked: Evaluate K models at once (vmapped over the model axis).

    Returns:
      The outputs stacked over the N images ([K, N, ...] when ``stacked``), as
      NumPy arrays.

    Raises:
      InvalidArgument: No images, a bad chunk size, or parameters stacked for
        K models without ``stacked=True``.
    """
    n = images.shape[0]
    if n == 0:
        raise rules.InvalidArgument("map_chunked needs at least one image")
    rules.at_least("chunk_size", chunk_size, 1)
    if key is None:
        key = jax.random.key(0)
        if stacked:
            key = jnp.stack([key] * jax.tree.leaves(params)[0].shape[0])
    key = keys_lib.as_typed(jnp.asarray(key))
    chunk_size = min(chunk_size, n)
    run_chunk = _chunk_runner(fn, stacked)
    axis = 1 if stacked else 0

    outputs = []
    for start in range(0, n, chunk_size):
        chunk = images[start : start + chunk_size]
        real = chunk.shape[0]
        if real < chunk_size:  # Pad so every call has the one compiled shape.
            chunk = np.pad(np.asarray(chunk), ((0, chunk_size - real), (0, 0)))
        try:
            out = run_chunk(params, chunk, key, start)
        except ScopeParamShapeError:
            if stacked:
                raise
            raise rules.InvalidArgument(
                "the parameters do not fit the model: parameters of K models stacked on a "
                "leading axis need stacked=True (and [K] keys)"
            ) from None
        outputs.append(
            jax.tree.map(lambda a, r=real: jax.lax.slice_in_dim(a, 0, r, axis=axis), out)
        )
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=axis), *local_copy(outputs))


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


def stack_scores(score_fns: tuple[ScoreFn, ...]) -> ScoreFn:
    """One per-example function giving every score as an array [S].

    Scoring S variants (e.g. smoothings) of the same model in one program lets
    XLA compute the shared reconstruction once instead of S times.
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
