"""Per-example losses: ``loss(params, x, key, hparams) -> terms``, lifted with ``jax.vmap``.

A loss takes one image ``x``, a PRNG key (used once, or ignored) and the
hyperparameters as a mapping of (traced) scalars, and returns a dict of named
scalar terms; ``"total"`` is the one training minimizes, the others are logged
as they come (history, checkpoints, TensorBoard, tables). Training adds
``hparams["epoch"]`` (1-based), so a loss can follow a schedule.

The reconstruction term is the squared error *summed* over the pixels (a
Gaussian decoder with fixed variance, up to constants), so ``beta`` weighs the
KL term against that sum, not against a per-pixel mean: beta = 1 with this sum
is a much weaker KL weight than beta = 1 with a per-pixel mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_vae import rules
from jax_vae.models import reparameterize
from jax_vae.vocab import LIKELIHOODS

Terms = dict[str, jax.Array]
Hparams = Mapping[str, Any]
ExampleLoss = Callable[[Any, jax.Array, jax.Array, Hparams], Terms]


def squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Squared error of one example, summed over its pixels."""
    return jnp.sum(jnp.square(x - x_hat))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) of one example, summed over latents."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def beta_vae_loss(
    x: jax.Array, x_hat: jax.Array, mean: jax.Array, logvar: jax.Array, beta: jax.Array
) -> Terms:
    """The beta-VAE objective of one example: squared error + beta * KL."""
    reconstruction = squared_error(x, x_hat)
    kl = kl_divergence(mean, logvar)
    return {"total": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}


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


def warmed_beta(beta: jax.Array, epoch: jax.Array, kl_warmup_epochs: jax.Array) -> jax.Array:
    """The KL weight of (1-based) ``epoch``: ramped linearly to beta over the warm-up.

    All three may be traced (the warm-up is a hyperparameter like beta); a
    warm-up of 0 gives beta itself.
    """
    beta = jnp.asarray(beta)
    ramp = jnp.minimum(1.0, epoch / jnp.maximum(kl_warmup_epochs, 1)).astype(beta.dtype)
    return jnp.where(jnp.asarray(kl_warmup_epochs) > 0, beta * ramp, beta)


def autoencoder_loss(module: nn.Module, *, likelihood: str = "gaussian") -> ExampleLoss:
    """The autoencoder's per-example loss: the reconstruction term, no hyperparameter.

    Args:
      module: An autoencoder with ``encode`` and ``decode_logits``.
      likelihood: ``gaussian`` (squared error summed over pixels, the seed
        spec) or ``bernoulli`` (binary cross-entropy summed over pixels).
    """
    rules.choice("likelihood", likelihood, LIKELIHOODS)

    def loss(params, x, key, hparams):
        del key, hparams  # Deterministic; reads no hyperparameter.
        logits = module.apply(
            params, module.apply(params, x, method="encode"), method="decode_logits"
        )
        reconstruction = reconstruction_nll(x, logits, likelihood)
        return {"total": reconstruction, "reconstruction": reconstruction}

    return loss


def vae_loss(module: nn.Module, *, likelihood: str = "gaussian") -> ExampleLoss:
    """The beta-VAE's per-example loss: reconstruction + beta * KL, one sample of z.

    Reads ``hparams["beta"]`` and, when given, ``hparams["kl_warmup_epochs"]``
    (with ``hparams["epoch"]``, which training adds): the KL weight ramps
    linearly from beta / W in the first epoch to beta at epoch W.

    Args:
      module: A VAE with ``encode`` -> (mean, logvar) and ``decode_logits``.
      likelihood: As :func:`autoencoder_loss`.
    """
    rules.choice("likelihood", likelihood, LIKELIHOODS)

    def loss(params, x, key, hparams):
        beta = warmed_beta(
            hparams["beta"], hparams.get("epoch", 1), hparams.get("kl_warmup_epochs", 0)
        )
        if likelihood == "gaussian":
            out = module.apply(params, x, key)
            return beta_vae_loss(x, out.reconstruction, out.mean, out.logvar, beta)

        def logits_of(m, x, key):
            mean, logvar = m.encode(x)
            return m.decode_logits(reparameterize(key, mean, logvar)), mean, logvar

        logits, mean, logvar = module.apply(params, x, key, method=logits_of)
        reconstruction, kl = bernoulli_nll(x, logits), kl_divergence(mean, logvar)
        return {"total": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}

    return loss
