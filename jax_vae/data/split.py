"""The one-class split: normal training images, held-out normals, the test set and its
labels, synthetic anomalies; and images as the models take them."""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple

import numpy as np

from jax_vae import rules, spec
from jax_vae.data.dataset import Dataset, OneClassSplit

_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def as_images(images: Any, *, name: str = "images") -> Any:
    """Images as the models take them: float32 ``[N, pixels]`` in [0, 1].

    Args:
      images: ``[N, pixels]``, ``[N, H, W]`` or ``[N, H, W, C]``, NumPy or JAX;
        uint8 (0-255) is scaled to [0, 1]; float pixels must already be in
        [0, 1]: anything else is refused, not silently trained on.
      name: How messages name the argument.

    Returns:
      An array of the same kind: a JAX array stays where it is (its range is
      checked there, only two numbers come to the host); anything else NumPy.

    Raises:
      InvalidArgument: Another shape or dtype, or floats outside [0, 1].
    """
    x = images if isinstance(images, np.ndarray) or hasattr(images, "addressable_shards") \
        else np.asarray(images)  # fmt: skip
    if x.ndim not in (2, 3, 4):
        raise rules.InvalidArgument(
            f"{name} must be [N, pixels], [N, H, W] or [N, H, W, C], got shape {list(x.shape)}"
        )
    if x.dtype == np.uint8:  # One table for both kinds: the same float wherever it lives.
        if isinstance(x, np.ndarray):
            x = _UINT8_TO_FLOAT[x]
        else:
            import jax.numpy as jnp  # noqa: PLC0415  (a JAX array: JAX is loaded)

            x = jnp.asarray(_UINT8_TO_FLOAT)[x]
    elif np.issubdtype(x.dtype, np.floating):
        low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not 0.0 <= low <= high <= 1.0:  # NaN fails too.
            raise rules.InvalidArgument(
                f"{name} must be uint8 (0-255) or floats in [0, 1], got floats in "
                f"[{low:g}, {high:g}]; scale them first (8-bit pixels: divide by 255)"
            )
        x = x if x.dtype == np.float32 else x.astype(np.float32)
    else:
        raise rules.InvalidArgument(
            f"{name} must be uint8 (0-255) or floats in [0, 1], got {x.dtype}"
        )
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on no images.


class SplitIndices(NamedTuple):
    """Which images a one-class split takes: training and held-out normals, test images."""

    train: np.ndarray  # Into Dataset.train_images, sorted.
    val: np.ndarray  # Into Dataset.train_images, sorted.
    test: np.ndarray  # Into Dataset.test_images, sorted.
    fingerprint: str  # A hash of the training and held-out images, in order.


def split_indices(
    dataset: Dataset,
    *,
    normal_class: int = 0,
    val_fraction: float = spec.VAL_FRACTION,
    anomaly_fraction: float | None = None,
    seed: int = 0,
) -> SplitIndices:
    """The one-class split as indices (cheap: no float images); see :func:`one_class_split`.

    The fingerprint hashes the training and held-out images themselves, not
    their indices: another source that orders the same files differently
    gives another fingerprint, so a run cannot be resumed or re-scored on it.

    Args:
      dataset: Raw images and labels.
      normal_class: The class treated as normal (0-9).
      val_fraction: Share of the normal training images held out.
      anomaly_fraction: None, or the anomalies' share of the test set.
      seed: Seed of the hold-out and anomaly sampling.
    """
    rules.normal_class("normal_class", normal_class)
    rules.number("val_fraction", val_fraction, low=0, high=1, high_open=True)
    if anomaly_fraction is not None:
        rules.fraction("anomaly_fraction", anomaly_fraction)
    rules.seed("seed", seed)
    rng = np.random.default_rng(seed)

    normal_idx = rng.permutation(np.flatnonzero(dataset.train_labels == normal_class))
    n_val = rules.held_out(
        "val_fraction", val_fraction, normal_idx.size, f"class {normal_class}"
    )
    val_idx, train_idx = np.sort(normal_idx[:n_val]), np.sort(normal_idx[n_val:])

    test_normal = np.flatnonzero(dataset.test_labels == normal_class)
    test_anomaly = np.flatnonzero(dataset.test_labels != normal_class)
    if anomaly_fraction is not None:
        n_anomalies = int(round(test_normal.size * anomaly_fraction / (1 - anomaly_fraction)))
        if n_anomalies > test_anomaly.size:
            raise rules.InvalidArgument(
                f"anomaly_fraction {anomaly_fraction} needs {n_anomalies} anomalies, "
                f"the test set has {test_anomaly.size}"
            )
        test_anomaly = rng.choice(test_anomaly, size=n_anomalies, replace=False)
    test_idx = np.sort(np.concatenate([test_normal, test_anomaly]))
    digest = hashlib.sha256()
    for part in (train_idx, val_idx):
        digest.update(np.ascontiguousarray(dataset.train_images[part]).tobytes())
    return SplitIndices(train_idx, val_idx, test_idx, digest.hexdigest()[:16])


def one_class_split(
    dataset: Dataset,
    *,
    normal_class: int = 0,
    val_fraction: float = spec.VAL_FRACTION,
    anomaly_fraction: float | None = None,
    seed: int = 0,
) -> OneClassSplit:
    """Builds the one-class split: train and validate on normals, test on a mix.

    Args:
      dataset: Raw images and labels.
      normal_class: The class treated as normal (0-9).
      val_fraction: Fraction of the normal training images held out to
        calibrate the threshold, in [0, 1); at least one image when > 0.
      anomaly_fraction: None for the full test set (all other digits are
        anomalies); otherwise all test normals plus anomalies sampled from the
        other digits so that they make up this fraction, in (0, 1).
      seed: Seed of the hold-out and anomaly sampling.

    Returns:
      The split, with test images in their original order.

    Raises:
      InvalidArgument: An argument is out of range, ``val_fraction`` holds
        out no image (or all), or the test set does not have enough anomalies
        for ``anomaly_fraction``.
    """
    idx = split_indices(
        dataset, normal_class=normal_class, val_fraction=val_fraction,
        anomaly_fraction=anomaly_fraction, seed=seed,
    )  # fmt: skip
    return take_split(dataset, idx, normal_class)


def take_split(dataset: Dataset, idx: SplitIndices, normal_class: int) -> OneClassSplit:
    """The split's float images and labels from its indices (:func:`split_indices`)."""
    digits = dataset.test_labels[idx.test].astype(np.int32)
    return OneClassSplit(
        normal_class=normal_class,
        train_images=as_images(dataset.train_images[idx.train]),
        val_images=as_images(dataset.train_images[idx.val]),
        test_images=as_images(dataset.test_images[idx.test]),
        test_labels=(digits != normal_class).astype(np.int32),
        test_classes=digits,
        fingerprint=idx.fingerprint,
    )


def synthetic_anomalies(
    images: np.ndarray, *, seed: int = 0, image_shape: tuple[int, int, int] = (28, 28, 1)
) -> np.ndarray:
    """Stroke-scale corruptions of normal images: anomalies made from normal data only.

    Even-indexed images get a random stroke added (on 28x28: a segment 8-14 px long and
    about 2 px wide, anywhere in the central 16x16 region); odd-indexed ones get a 9x9
    patch erased around a random bright pixel. Both are the size of what tells digits
    apart, so how well a model separates validation normals from their corrupted copies is
    a model-selection signal that never looks at real anomalies (see the README's preset
    section). Other sizes scale the stroke, its region and the patch with the image; a
    stroke is white and a patch black in every channel.

    Args:
      images: Normal images [N, H * W * C], float in [0, 1].
      seed: Seed of the corruptions.
      image_shape: (height, width, channels) of the flattened images.

    Returns:
      The corrupted copies [N, H * W * C], float32 in [0, 1].
    """
    n = images.shape[0]
    height, width, channels = image_shape
    scale = np.float32(min(height, width) / 28)  # 1 on 28x28: the drawing as it always was.
    rng = np.random.default_rng(seed)
    out = np.array(images, np.float32).reshape(n, height, width, channels)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

    stroke = np.arange(0, n, 2)  # Add a stroke: distance of each pixel to a segment.
    cy, cx = rng.uniform(6, 22, size=(2, stroke.size, 1, 1)).astype(np.float32)
    cy, cx = cy * np.float32(height / 28), cx * np.float32(width / 28)
    angle = rng.uniform(0, np.pi, size=(stroke.size, 1, 1)).astype(np.float32)
    half = rng.uniform(4, 7, size=(stroke.size, 1, 1)).astype(np.float32) * scale
    dy, dx = np.sin(angle), np.cos(angle)
    t = np.clip((ys - cy) * dy + (xs - cx) * dx, -half, half)
    dist = np.hypot(ys - (cy + t * dy), xs - (cx + t * dx))
    ink = np.clip(np.float32(1.5) * scale - dist, 0, 1)[..., None]
    out[stroke] = np.maximum(out[stroke], ink)

    r = max(int(round(4 * scale)), 1)  # The patch's half-width: 4 (a 9x9 patch) on 28x28.
    for i in range(1, n, 2):  # Erase a patch centred on a bright pixel.
        bright = np.argwhere(out[i].mean(axis=-1) > 0.5)
        y, x = bright[rng.integers(len(bright))] if len(bright) else (height // 2, width // 2)
        out[i, max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = 0
    return out.reshape(n, height * width * channels)
