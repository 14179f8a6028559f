"""Data: where a dataset comes from, reading it, and the one-class split.

The loaders return raw arrays (MNIST-style ``uint8``; a user's images as read);
:func:`one_class_split` turns them into the float32 arrays the models train on. Everything
here is NumPy and pure: the same arguments always give the same arrays. The modules:

* :mod:`~jax_vae.data.catalog`: which source a dataset comes from, and loading it;
* :mod:`~jax_vae.data.idx`: IDX files, the bundled MNIST, the official MD5s;
* :mod:`~jax_vae.data.tfds`: TensorFlow Datasets as a source;
* :mod:`~jax_vae.data.images`: a user's image files, folders and array files;
* :mod:`~jax_vae.data.split`: the one-class split and synthetic anomalies;
* :mod:`~jax_vae.data.dataset`: the types they share.
"""

from __future__ import annotations

from jax_vae.data.catalog import (
    DATA_ENV,
    SYSTEM_DIRS,
    find_dataset,
    load_dataset,
    load_dataset_early,
)
from jax_vae.data.dataset import (
    IMAGE_SHAPE,
    NUM_PIXELS,
    DataError,
    Dataset,
    OneClassSplit,
    image_shape_of,
)
from jax_vae.data.idx import (
    FASHION_MNIST_MD5,
    MNIST_FILES,
    MNIST_MD5,
    OFFICIAL_MD5,
    bundled_data_dir,
    load_idx,
    parse_idx,
)
from jax_vae.data.images import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    NORMAL_FOLDERS,
    PARALLEL_MIN_PIXELS,
    decode_images,
    image_files,
    load_arrays,
    load_folder,
    read_images,
    report_skipped,
)
from jax_vae.data.split import (
    SplitIndices,
    as_images,
    one_class_split,
    split_indices,
    synthetic_anomalies,
    take_split,
)
from jax_vae.data.tfds import load_tfds

__all__ = [
    "ARRAY_SUFFIXES", "DATA_ENV", "FASHION_MNIST_MD5", "IMAGE_SHAPE", "IMAGE_SUFFIXES",
    "MNIST_FILES", "MNIST_MD5", "NORMAL_FOLDERS", "NUM_PIXELS", "OFFICIAL_MD5",
    "PARALLEL_MIN_PIXELS", "SYSTEM_DIRS", "DataError", "Dataset", "OneClassSplit",
    "SplitIndices", "as_images", "bundled_data_dir", "decode_images", "find_dataset",
    "image_files", "image_shape_of", "load_arrays", "load_dataset", "load_dataset_early",
    "load_folder", "load_idx", "load_tfds", "one_class_split", "parse_idx", "read_images",
    "report_skipped",
    "split_indices", "synthetic_anomalies", "take_split",
]  # fmt: skip
