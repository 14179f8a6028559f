"""Training health: whether a trained model failed, read from its loss history.

A model can train without an error and still be useless: a VAE whose posterior collapsed
(its code carries nothing, so every image is reconstructed as the average one), a run whose
loss rose again (too high a learning rate), a model that never got below what the mean
image achieves. Its scores then rank images by how far they are from the average, or at
random, and nothing in a table of AUROCs says why. :func:`check` names each such symptom
with a remedy; the commands log each finding as a warning and write it to ``results.txt``
and ``metrics.json``, and :meth:`jax_vae.detector.Detector.fit` warns the same::

    findings = health.check(result.history, baseline=health.baseline_loss(images))
    for finding in findings:
        logging.warning("%s", finding.message("vae"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_vae import losses, metrics

# A posterior carrying under 1 nat per image (KL to the prior, summed over the latents)
# tells the decoder less than 1.44 bits about the image: the code is empty. Counting inactive
# latents instead would flag healthy beta-VAEs, which use a few of their latents (the seed
# spec's VAE at beta 2 on digit 0 carries ~5.6 nats in a handful of its 20).
COLLAPSED_NATS = 1.0
# The loss in each of the last RECENT epochs above its minimum by this share of that minimum
# (one noisy epoch of a small training set, three steps long, is not a trend).
RISE = 0.1
RECENT = 2
# The reconstruction term no better than this share above the mean image's.
NO_LEARNING = 0.95
# A loss still falling by this share per epoch at the end: more epochs may yet help.
STILL_FALLING = 0.01
# Images with more pixels than the benchmarks' 28x28: a defect may be small against the image,
# and the anomaly map's largest values (jax_vae.scores.MAP_SCORES) see it where its mean does
# not. On the benchmarks' images the mean residual ranks better (docs/benchmarks.md).
LARGE_PIXELS = 28 * 28
# An alternative score replaces the configured one only when it separates the held-out normals
# from their synthetic corruptions better by more than this (AUROC): the simpler score wins ties.
SCORE_MARGIN = 0.01


class Finding(NamedTuple):
    """One symptom of a failed training."""

    symptom: str  # ``posterior collapse``, ``diverging`` or ``no learning``.
    detail: str  # The evidence, with its numbers.
    remedy: str

    @property
    def text(self) -> str:
        """``posterior collapse: <detail>; <remedy>``."""
        return f"{self.symptom}: {self.detail}; {self.remedy}"

    def message(self, name: str) -> str:
        """The one line a user reads: ``vae: posterior collapse: ...; try ...``."""
        return f"{name}: {self.text}"


def baseline_loss(images: Any, *, likelihood: str = "gaussian") -> float:
    """The reconstruction term a constant predictor reaches on ``images`` [N, pixels] in
    [0, 1]: each image reconstructed as their mean image (the loss of a model that learned
    nothing about the individual images), under the models' term
    (:func:`jax_vae.losses.reconstruction_nll`)."""
    images = jnp.asarray(images, jnp.float32)
    mean = jnp.clip(jnp.mean(images, axis=0), 1e-6, 1 - 1e-6)
    logits = jnp.log(mean) - jnp.log1p(-mean)  # The sigmoid of these is the mean image.
    per_image = jax.vmap(losses.reconstruction_nll, in_axes=(0, None, None))(
        images, logits, likelihood)  # fmt: skip
    return float(jnp.mean(per_image))


def check(history: Mapping[str, Any], *, baseline: float | None = None) -> list[Finding]:
    """The symptoms of a failed training in one model's loss history.

    Args:
      history: Per-epoch means of each loss term, [epochs] each (``total``; ``reconstruction``
        and ``kl`` where the loss has them), as :func:`jax_vae.train.train` returns for one
        model.
      baseline: The reconstruction term of a constant predictor on the training images
        (:func:`baseline_loss`); None skips the no-learning check.

    Returns:
      Each finding: ``posterior collapse`` (the final KL under :data:`COLLAPSED_NATS` nats
      per image), ``diverging`` (a non-finite loss, or the loss of each of the last
      :data:`RECENT` epochs above its minimum by more than :data:`RISE` of it), ``no
      learning`` (the final reconstruction term above :data:`NO_LEARNING` of ``baseline``:
      train longer while the loss still falls, else lower the learning rate).
    """
    total = np.asarray(history["total"], np.float64)
    epochs, found = total.size, []
    if not np.all(np.isfinite(total)):
        bad = int(np.flatnonzero(~np.isfinite(total))[0]) + 1
        return [Finding("diverging", f"the loss is not finite from epoch {bad}/{epochs}",
                        "try a lower learning rate")]  # fmt: skip
    best = int(np.argmin(total))
    if np.min(total[-RECENT:]) - total[best] > RISE * abs(total[best]):
        found.append(Finding(
            "diverging",
            f"the loss rose from {total[best]:.4g} (epoch {best + 1}) to {total[-1]:.4g} "
            f"(epoch {epochs}), above it in each of the last {min(RECENT, epochs)} epochs",
            "try a lower learning rate",
        ))  # fmt: skip
    if "kl" in history:
        kl = float(np.asarray(history["kl"])[-1])
        if kl < COLLAPSED_NATS:
            found.append(Finding(
                "posterior collapse",
                f"the code carries {kl:.3g} nats per image (KL to the prior, under "
                f"{COLLAPSED_NATS:g}): the decoder ignores it",
                "try a smaller beta or a KL warm-up (kl_warmup_epochs), or the AE",
            ))  # fmt: skip
    if baseline is not None:
        final = float(np.asarray(history.get("reconstruction", total))[-1])
        if final > NO_LEARNING * baseline:
            falling = epochs > 1 and total[-1] < (1 - STILL_FALLING) * total[-2]
            found.append(Finding(
                "no learning",
                f"reconstruction error {final:.4g}, the mean image's {baseline:.4g}, "
                + ("still falling" if falling else "stalled"),
                "train longer (more epochs)" if falling else
                "try a lower learning rate (a VAE: a smaller beta)",
            ))  # fmt: skip
    return found


def recommend(candidates: Mapping[str, tuple[Sequence[Any], float | None]], *,
              fallback: str = "ae") -> tuple[str, str]:
    """The model to use of a run's models, from what a user has: each model's training-health
    findings and its synthetic AUROC (held-out normals against their synthetic corruptions;
    :func:`jax_vae.metrics.separation_auroc`). No test label is read.

    Args:
      candidates: By model name: (findings, synthetic AUROC).
      fallback: The model kept unless another beats it (the AE: it cannot collapse).

    Returns:
      (name, why): ``fallback``, unless a model with no findings has a higher synthetic
      AUROC than it (then the highest such one), and the reason in words. Without
      ``fallback`` among the candidates: the healthy model with the highest synthetic AUROC
      (the first of them when none is healthy).
    """
    def auroc(name: str) -> float:
        value = candidates[name][1]
        return -np.inf if value is None or not np.isfinite(value) else float(value)

    healthy = [n for n, (found, _) in candidates.items() if not found]
    failed = sorted(set(candidates) - set(healthy))
    note = f"; {', '.join(failed)} did not train well" if failed else ""
    scores = ", ".join(f"{n} {candidates[n][1]:.3f}" for n in candidates
                       if candidates[n][1] is not None)  # fmt: skip
    if fallback not in candidates:
        if not healthy:
            return next(iter(candidates)), f"every model has training-health warnings{note}"
        best = max(healthy, key=auroc)
        return best, f"the highest synthetic AUROC of the healthy models ({scores}){note}"
    better = [n for n in healthy if n != fallback and auroc(n) > auroc(fallback)]
    if better:
        best = max(better, key=auroc)
        return best, (f"healthy, with a higher synthetic AUROC than {fallback} "
                      f"({scores}){note}")  # fmt: skip
    if not healthy:
        return fallback, f"every model has training-health warnings{note}"
    return fallback, (f"no healthy model has a higher synthetic AUROC than {fallback} "
                      f"({scores}){note}")  # fmt: skip


def score_candidates(image_shape: Sequence[int], score: str,
                     alternatives: Sequence[str]) -> tuple[str, ...]:  # fmt: skip
    """The scores a model may take on images of ``image_shape`` (height, width, channels):
    ``score``, then the ``alternatives`` where the images have more than
    :data:`LARGE_PIXELS` pixels (on smaller ones ``score`` alone)."""
    height, width = image_shape[:2]
    if height * width <= LARGE_PIXELS:
        return (score,)
    return (score, *(a for a in dict.fromkeys(alternatives) if a != score))


def choose_score(aurocs: Mapping[str, float | None], *,
                 margin: float = SCORE_MARGIN) -> tuple[str, str]:  # fmt: skip
    """A model's score, from its candidates' synthetic AUROCs (held-out normals against their
    synthetic corruptions; :func:`jax_vae.metrics.separation_auroc`). No test label is read.

    Args:
      aurocs: By score name, the configured score first, then the alternatives
        (:func:`score_candidates`).
      margin: How much higher an alternative's synthetic AUROC must be.

    Returns:
      (name, why): the first score, unless an alternative's synthetic AUROC is above its by
      more than ``margin`` (then the alternative with the highest), and the reason in words.
    """
    def value(name: str) -> float:
        v = aurocs[name]
        return -np.inf if v is None or not np.isfinite(v) else float(v)

    first, *others = aurocs
    shown = ", ".join(f"{n} {aurocs[n]:.3f}" for n in aurocs if aurocs[n] is not None)
    better = [n for n in others if value(n) > value(first) + margin]
    if better:
        best = max(better, key=value)
        return best, f"synthetic AUROC above {first}'s by more than {margin:g} ({shown})"
    return first, f"no other score's synthetic AUROC above it by more than {margin:g} ({shown})"


def score_choice(names: Sequence[str], normal: Any, corrupted: Any) -> dict[str, Any]:
    """:func:`choose_score` from one model's scores [images, candidates] of held-out normals
    and of their synthetic corruptions, the candidates' columns named ``names``: the record
    a run and a detector keep, ``{"score", "why", "synthetic_auroc": {name: AUROC}}``."""
    normal, corrupted = np.asarray(normal), np.asarray(corrupted)
    aurocs = {name: metrics.separation_auroc(normal[:, i], corrupted[:, i])
              for i, name in enumerate(names)}  # fmt: skip
    name, why = choose_score(aurocs)
    return {"score": name, "why": why, "synthetic_auroc": aurocs}
