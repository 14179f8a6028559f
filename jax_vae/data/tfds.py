"""TensorFlow Datasets as a source (optional: only when asked for, never downloaded here)."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
from absl import logging

from jax_vae.data.dataset import IMAGE_SHAPE, DataError, Dataset
from jax_vae.data.idx import _check_pair
from jax_vae.vocab import DATASETS as TFDS_DATASETS

# tfds downloads MNIST from this host; it is only probed (one TCP connect,
# seconds) so that an offline machine fails fast instead of retrying for minutes.
_TFDS_PROBE_HOST = ("storage.googleapis.com", 443)


def _network_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(_TFDS_PROBE_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _absl_errors_only():
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _tfds_split_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    # Iterate in batches: `as_dataset(batch_size=-1)` aborts the process under
    # `tfds.testing.mock_data` (tensorflow-cpu 2.21).
    images, labels = [], []
    for batch in tfds.as_numpy(builder.as_dataset(split=split).batch(8192)):
        images.append(batch["image"])
        labels.append(batch["label"])
    image_array = np.concatenate(images).astype(np.uint8)
    if image_array.ndim == 4 and image_array.shape[-1] == 1:
        image_array = image_array[..., 0]
    return image_array, np.concatenate(labels).astype(np.uint8)


def load_tfds(name: str = "mnist", *, data_dir: str | None = None) -> Dataset:
    """Loads a 28x28 grayscale dataset through tensorflow-datasets.

    Uses prepared data in ``data_dir`` (tfds' default folder when None) and
    downloads it where the network allows.

    Args:
      name: A tfds builder name: ``mnist``, ``fashion_mnist`` or ``kmnist``.
      data_dir: The tfds data directory.

    Returns:
      The raw dataset.

    Raises:
      DataError: tfds is not installed, the dataset is not prepared and cannot
        be downloaded, or it is not 28x28 grayscale with 10 classes.
    """
    if name not in TFDS_DATASETS:
        raise DataError(f"unknown tfds dataset {name!r}; choose one of {', '.join(TFDS_DATASETS)}")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "the tfds source needs tensorflow-datasets and tensorflow: pip install 'jax-vae[tfds]'"
        ) from None
    try:
        with _absl_errors_only():  # tfds warns about half-made folders while probing.
            builder = tfds.builder(name, data_dir=data_dir)
            features = builder.info.features
            prepared = builder.is_prepared()
        if tuple(features["image"].shape) != (*IMAGE_SHAPE, 1):
            raise DataError(f"tfds dataset {name} is not 28x28 grayscale")
        if not prepared:
            if not _network_reachable():
                raise DataError(
                    f"tfds dataset {name} is not prepared in "
                    f"{data_dir or 'the default tfds data dir'} and there is no network "
                    "to download it; use --data_source=bundled (MNIST shipped with the "
                    "package), --data_source=idx --data_dir=DIR (your IDX files), or "
                    "--data_dir pointing at prepared tfds data"
                )
            builder.download_and_prepare()
        train = _tfds_split_arrays(builder, "train")
        test = _tfds_split_arrays(builder, "test")
    except DataError:
        raise
    except Exception as e:  # tfds raises many types; report them in one line.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"tfds could not load {name}: {first_line}") from None
    dataset = Dataset(*train, *test)
    _check_pair(dataset.train_images, dataset.train_labels, split="train")
    _check_pair(dataset.test_images, dataset.test_labels, split="test")
    return dataset
