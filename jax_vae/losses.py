"""Per-example losses, lifted to batches with ``jax.vmap``.

The reconstruction term is the squared error *summed* over the 784 pixels (a
Gaussian decoder with fixed variance, up to constants), so ``beta`` weighs the
KL term against that sum, not against a per-pixel mean: beta = 1 with this sum
is a much weaker KL weight than beta = 1 with a per-pixel mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_vae.models import VAE


class LossTerms(NamedTuple):
    """The objective and its parts (scalars for one example, or batched)."""

    total: jax.Array
    reconstruction: jax.Array
    kl: jax.Array


def squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Squared error of one example, summed over its pixels."""
    return jnp.sum(jnp.square(x - x_hat))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) of one example, summed over latents."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def beta_vae_loss(
    x: jax.Array, x_hat: jax.Array, mean: jax.Array, logvar: jax.Array, beta: jax.Array
) -> LossTerms:
    """The beta-VAE objective of one example: squared error + beta * KL."""
    reconstruction = squared_error(x, x_hat)
    kl = kl_divergence(mean, logvar)
    return LossTerms(reconstruction + beta * kl, reconstruction, kl)


batched_squared_error = jax.vmap(squared_error)
batched_kl_divergence = jax.vmap(kl_divergence)
batched_beta_vae_loss = jax.vmap(beta_vae_loss, in_axes=(0, 0, 0, 0, None))

ExampleLoss = Callable[[dict, jax.Array, jax.Array, jax.Array], LossTerms]


def make_example_loss(model: nn.Module) -> ExampleLoss:
    """The per-example training loss of a model.

    Args:
      model: An ``AutoEncoder`` (squared error only, KL = 0) or a ``VAE``
        (beta-VAE objective with one reparameterized sample).

    Returns:
      ``loss(params, x, key, beta) -> LossTerms`` for one image ``x`` [784];
      lift it over a batch with ``jax.vmap``.
    """
    if isinstance(model, VAE):

        def vae_loss(params, x, key, beta):
            out = model.apply(params, x, key)
            return beta_vae_loss(x, out.reconstruction, out.mean, out.logvar, beta)

        return vae_loss

    def ae_loss(params, x, key, beta):
        del key, beta  # Deterministic, no KL term.
        reconstruction = squared_error(x, model.apply(params, x))
        return LossTerms(reconstruction, reconstruction, jnp.zeros_like(reconstruction))

    return ae_loss
