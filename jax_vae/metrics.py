"""Detection metrics from scores: threshold on validation normals, scikit-learn metrics."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jax_vae import rules, spec

FEW_HELD_OUT = 50  # Held-out normals below which the threshold is called uncertain.


def _sklearn_metrics():
    # scikit-learn takes ~0.7 s to import (scipy.stats): a program pays for it when it
    # first computes a metric, not when it imports this module.
    from sklearn import metrics  # noqa: PLC0415

    return metrics


class DetectionMetrics(NamedTuple):
    """Threshold-free (AUROC, AUPRC) and thresholded metrics; anomaly = positive."""

    auroc: float
    auprc: float
    f1: float
    precision: float
    recall: float
    fpr: float
    threshold: float


def threshold_from_normals(normal_scores: np.ndarray, *,
                           percentile: float = spec.THRESHOLD_PERCENTILE) -> float:
    """The ``percentile``-th percentile of held-out normal scores.

    Args:
      normal_scores: Scores of normal images not used for training.
      percentile: In (0, 100]; 95 flags about 5% of normals.

    Returns:
      The threshold: a score strictly above it is flagged as an anomaly.
    """
    normal_scores = np.asarray(normal_scores)
    if normal_scores.size == 0:
        raise ValueError("need at least one held-out normal score to set a threshold")
    rules.percentile("percentile", percentile)
    return float(np.percentile(normal_scores, percentile))


def fpr_interval(n: int, *, percentile: float = spec.THRESHOLD_PERCENTILE,
                 confidence: float = 0.95) -> tuple[float, float]:
    """An interval for the share of normal images a threshold flags, given how it was set.

    The threshold is the ``percentile`` of ``n`` held-out normal scores
    (:func:`threshold_from_normals`), so the share of all normal images scoring above it is
    itself random: for continuous scores, the k-th smallest of n scores has F(score) ~
    Beta(k, n + 1 - k) whatever the score distribution F, so the flagged share 1 - F is
    Beta(n + 1 - k, k). NumPy's percentile lies between two order statistics; the interval
    covers both. With 15 held-out normals and the 95th percentile it is about 0.2% to 30%;
    with 500, 3.3% to 7.2%.

    Args:
      n: Held-out normal images (at least 1).
      percentile: The threshold's percentile, in (0, 100].
      confidence: The interval's coverage, in (0, 1).

    Returns:
      (low, high): the share of normal images flagged lies in it with ``confidence``.
    """
    from scipy import special  # noqa: PLC0415  (only here)

    rules.at_least("n", n, 1)
    rules.percentile("percentile", percentile)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    position = percentile / 100 * (n - 1)  # 0-based, as numpy's linear percentile.
    below, above = int(np.floor(position)) + 1, int(np.ceil(position)) + 1  # 1-based ranks.
    tail = (1 - confidence) / 2
    return (float(special.betaincinv(n + 1 - above, above, tail)),
            float(special.betaincinv(n + 1 - below, below, 1 - tail)))


def threshold_warning(n: int, *, percentile: float = spec.THRESHOLD_PERCENTILE) -> str | None:
    """The warning a threshold set from ``n`` held-out normals deserves (None from
    :data:`FEW_HELD_OUT` of them on): how few, and the interval of :func:`fpr_interval`."""
    if n >= FEW_HELD_OUT:
        return None
    low, high = fpr_interval(n, percentile=percentile)
    return (f"only {n} held-out normal image(s) set the threshold (the {percentile:g}th "
            f"percentile of their scores): it may flag anywhere from {low:.1%} to {high:.1%} "
            f"of normal images (95% interval), not {100 - percentile:g}%; more normal images, "
            f"or a larger held-out fraction (--val_fraction), make it firmer")


def separation_auroc(normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> float:
    """AUROC of telling two score samples apart (anomalous = positive).

    Used with held-out normals and their synthetic corruptions
    (:func:`jax_vae.data.synthetic_anomalies`): a detection-quality signal
    from normal data only, for choosing models without test labels.
    """
    normal_scores = np.asarray(normal_scores, np.float64).ravel()
    anomalous_scores = np.asarray(anomalous_scores, np.float64).ravel()
    if normal_scores.size == 0 or anomalous_scores.size == 0:
        raise ValueError("need at least one score on each side")
    labels = np.r_[np.zeros(normal_scores.size), np.ones(anomalous_scores.size)]
    skm = _sklearn_metrics()
    return float(skm.roc_auc_score(labels, np.r_[normal_scores, anomalous_scores]))


def detection_metrics(
    labels: np.ndarray, scores: np.ndarray, *, threshold: float
) -> DetectionMetrics:
    """Metrics of anomaly scores against labels (1 = anomaly).

    Args:
      labels: [N] binary labels with both classes present.
      scores: [N] scores; higher = more anomalous.
      threshold: Scores above it are predicted anomalous.

    Returns:
      AUROC, AUPRC (average precision), F1, precision, recall and the
      false-positive rate at the threshold.
    """
    labels = np.asarray(labels).astype(np.int32)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be equal 1-D shapes"
        )
    if np.unique(labels).size != 2:
        raise ValueError("labels need both normals (0) and anomalies (1)")
    predicted = (scores > threshold).astype(np.int32)
    skm = _sklearn_metrics()
    tn, fp, _, _ = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return DetectionMetrics(
        auroc=float(skm.roc_auc_score(labels, scores)),
        auprc=float(skm.average_precision_score(labels, scores)),
        f1=float(skm.f1_score(labels, predicted, zero_division=0)),
        precision=float(skm.precision_score(labels, predicted, zero_division=0)),
        recall=float(skm.recall_score(labels, predicted, zero_division=0)),
        fpr=float(fp / (fp + tn)),
        threshold=float(threshold),
    )


def evaluate(
    labels: np.ndarray,
    val_scores: np.ndarray,
    test_scores: np.ndarray,
    synthetic_scores: np.ndarray,
    *,
    percentile: float = spec.THRESHOLD_PERCENTILE,
) -> dict[str, float]:
    """Every reported number of one model: the one path from scores to metrics.

    The threshold is the ``percentile`` of the held-out normal scores; the
    test metrics follow (:func:`detection_metrics`), and ``synthetic_auroc``
    is how well the scores separate the held-out normals from their synthetic
    corruptions (:func:`separation_auroc`, normal data only).

    Returns:
      ``auroc, auprc, f1, precision, recall, fpr, threshold, held_out, fpr_low, fpr_high,
      synthetic_auroc``: ``held_out`` is the number of held-out normals, ``fpr_low`` and
      ``fpr_high`` the 95% interval of the share of normal images the threshold flags
      (:func:`fpr_interval`). Without test images (``labels`` empty: a folder without
      ``test/``) the test metrics are None.
    """
    threshold = threshold_from_normals(val_scores, percentile=percentile)
    held_out = int(np.size(val_scores))
    low, high = fpr_interval(held_out, percentile=percentile)
    if np.size(labels):
        test = detection_metrics(labels, test_scores, threshold=threshold)._asdict()
    else:
        test = {**dict.fromkeys(DetectionMetrics._fields), "threshold": float(threshold)}
    return {**test, "held_out": held_out, "fpr_low": low, "fpr_high": high,
            "synthetic_auroc": separation_auroc(val_scores, synthetic_scores)}
