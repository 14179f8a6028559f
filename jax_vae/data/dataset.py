"""The data's types: a dataset of raw images and labels, a one-class split."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jax_vae import errors, rules

IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28

DataError = errors.DataError


class Dataset(NamedTuple):
    """Raw images (uint8 or floats in [0, 1]; [N, H, W] or [N, H, W, C]) and labels ([N]).

    MNIST-style datasets: 28x28 uint8 digits, labels their classes 0-9. A user's images
    (:func:`load_folder`, :func:`load_arrays`): training labels 0 (all normal), test labels
    0 for normal images and ``k`` for the k-th kind of anomaly, ``class_names`` naming them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = ()  # Of the test labels; () for the named datasets.

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the images."""
        return image_shape_of(self.train_images)


def image_shape_of(images: Any, given: tuple | None = None) -> tuple[int, int, int]:
    """(height, width, channels) of ``[N, H, W(, C)]`` images, or of flat ``[N, pixels]``
    ones: ``given``, else a square grayscale image."""
    shape = np.shape(images)
    if len(shape) == 4:
        return tuple(shape[1:4])
    if len(shape) == 3:
        return (shape[1], shape[2], 1)
    if given is not None:
        return tuple(given)
    side = int(round(np.sqrt(shape[-1]))) if len(shape) == 2 else 0
    if len(shape) != 2 or side * side != shape[-1]:
        raise rules.InvalidArgument(
            f"images of shape {list(shape)}: give them as [N, H, W(, C)], or pass "
            "image_shape=(H, W, C) for flat ones"
        )
    return (side, side, 1)


class OneClassSplit(NamedTuple):
    """A one-class anomaly-detection split.

    Images are float32 in [0, 1], flattened to 784. ``test_labels`` is 1 for an
    anomaly and 0 for a normal image; ``test_classes`` keeps the original class.
    """

    normal_class: int
    train_images: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_classes: np.ndarray
    fingerprint: str = ""  # Of the training and held-out images (SplitIndices).
