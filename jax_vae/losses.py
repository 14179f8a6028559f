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
import optax

from jax_vae import rules
from jax_vae.models import VAE, reparameterize
from jax_vae.rules import LIKELIHOODS


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




def bernoulli_nll(x: jax.Array, logits: jax.Array) -> jax.Array:
    """Binary cross-entropy of one example from decoder logits, summed over pixels.

    Pixels in [0, 1] are treated as Bernoulli probabilities (the usual MNIST
    convention); computed from logits for numerical stability.
    """
    return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x))


def reconstruction_nll(x: jax.Array, logits: jax.Array, likelihood: str) -> jax.Array:
    """The reconstruction term of one example: summed squared error of the
    sigmoid output (``gaussian``) or binary cross-entropy (``bernoulli``)."""
    if likelihood == "gaussian":
        return squared_error(x, jax.nn.sigmoid(logits))
    rules.choice("likelihood", likelihood, LIKELIHOODS)
    return bernoulli_nll(x, logits)


def make_example_loss(model: nn.Module, *, likelihood: str = "gaussian") -> ExampleLoss:
    """The per-example training loss of a model.

    Args:
      model: An ``AutoEncoder`` (reconstruction only, KL = 0) or a ``VAE``
        (beta-VAE objective with one reparameterized sample).
      likelihood: ``gaussian`` (squared error summed over pixels, the seed
        spec) or ``bernoulli`` (binary cross-entropy summed over pixels).

    Returns:
      ``loss(params, x, key, beta) -> LossTerms`` for one image ``x`` [784];
      lift it over a batch with ``jax.vmap``.
    """
    rules.choice("likelihood", likelihood, LIKELIHOODS)
    if isinstance(model, VAE):
        if likelihood == "gaussian":

            def vae_loss(params, x, key, beta):
                out = model.apply(params, x, key)
                return beta_vae_loss(x, out.reconstruction, out.mean, out.logvar, beta)

            return vae_loss

        def vae_logits(module, x, key):
            mean, logvar = module.encode(x)
            return module.decode_logits(reparameterize(key, mean, logvar)), mean, logvar

        def bernoulli_vae_loss(params, x, key, beta):
            logits, mean, logvar = model.apply(params, x, key, method=vae_logits)
            reconstruction = bernoulli_nll(x, logits)
            kl = kl_divergence(mean, logvar)
            return LossTerms(reconstruction + beta * kl, reconstruction, kl)

        return bernoulli_vae_loss

    def ae_loss(params, x, key, beta):
        del key, beta  # Deterministic, no KL term.
        logits = model.apply(
            params, model.apply(params, x, method="encode"), method="decode_logits"
        )
        reconstruction = reconstruction_nll(x, logits, likelihood)
        return LossTerms(reconstruction, reconstruction, jnp.zeros_like(reconstruction))

    return ae_loss
