"""jax-vae: one-class anomaly detection with a JAX/Flax autoencoder and beta-VAE.

The modules, in the order data flows through them: ``data`` -> ``models`` ->
``losses`` -> ``train`` -> ``scoring`` -> ``metrics``; the entries users extend,
``registry`` (models) and ``scores`` (ways of scoring them), and ``plugins`` (a user's
file that registers them); beside them ``spec`` (the seed specification's defaults),
``keys`` (the key schedule), ``vocab`` and ``rules`` (names and argument rules),
``sharding``, ``checkpoints``, ``runs`` (the run folder), ``detector`` and ``baselines``.
``import jax_vae`` is cheap: each module is imported on its first use (``jax_vae.train``),
so scikit-learn or Orbax load only when needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "baselines", "checkpoints", "data", "detector", "keys", "losses", "metrics", "models",
    "plugins", "registry", "rules", "runs", "scores", "scoring", "sharding", "spec", "train",
    "vocab",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
