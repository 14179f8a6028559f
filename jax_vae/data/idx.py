"""IDX files (MNIST's and Fashion-MNIST's format), the bundled MNIST, official MD5s."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from importlib import resources

import numpy as np

from jax_vae.data.dataset import IMAGE_SHAPE, DataError, Dataset

# Official file names and the MD5 of their *decompressed* content.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Fashion-MNIST's (Xiao et al. 2017), as its README publishes them.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
OFFICIAL_MD5 = {"mnist": MNIST_MD5, "fashion_mnist": FASHION_MNIST_MD5}
_IDX_UBYTE = 0x08


def parse_idx(data: bytes, *, name: str) -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file of unsigned bytes.

    Args:
      data: The whole file content.
      name: The file's name, used in error messages.

    Returns:
      A uint8 array with the shape given in the file's header.

    Raises:
      DataError: The header is malformed or the size does not match it.
    """
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE or not 1 <= ndim <= 3:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (bad magic number)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"{name}: size {len(data)} bytes does not match its header "
            f"(shape {shape} needs {expected}); the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_maybe_gzip(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def _find_idx_file(directory: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"missing data file {os.path.join(directory, stem)}[.gz]")


def _load_idx_file(directory: str, stem: str, *, dataset: str | None) -> np.ndarray:
    path = _find_idx_file(directory, stem)
    data = _read_maybe_gzip(path)
    if dataset is not None:
        expected = OFFICIAL_MD5[dataset][stem]
        digest = hashlib.md5(data).hexdigest()
        if digest != expected:
            raise DataError(
                f"{path}: MD5 of the decompressed content is {digest}, expected {expected} "
                f"(official {dataset}); the file is corrupt or another dataset's"
            )
    return parse_idx(data, name=path)


def _check_pair(images: np.ndarray, labels: np.ndarray, *, split: str) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{split} images have shape {images.shape}, expected [N, 28, 28]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{split} labels have shape {labels.shape}, expected [{images.shape[0]}]")
    if labels.size and labels.max() > 9:
        raise DataError(f"{split} labels must be classes 0-9, found {labels.max()}")


def load_idx(directory: str, *, verify_md5: bool | str = False) -> Dataset:
    """Loads the four MNIST-format IDX files (``.gz`` or raw) from a directory.

    Args:
      directory: Folder with ``train-images-idx3-ubyte[.gz]``,
        ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
        ``t10k-labels-idx1-ubyte[.gz]``.
      verify_md5: Check the decompressed content against the official MD5s
        of this dataset (``mnist`` or ``fashion_mnist``; True means ``mnist``).

    Returns:
      The raw dataset.

    Raises:
      DataError: A file is missing, truncated, corrupt or of the wrong shape.
    """
    if not os.path.isdir(directory):
        raise DataError(f"data directory {directory} does not exist")
    dataset = "mnist" if verify_md5 is True else verify_md5 or None
    arrays = {
        key: _load_idx_file(directory, stem, dataset=dataset) for key, stem in MNIST_FILES.items()
    }
    dataset = Dataset(**arrays)
    _check_pair(dataset.train_images, dataset.train_labels, split="train")
    _check_pair(dataset.test_images, dataset.test_labels, split="test")
    return dataset


def bundled_data_dir() -> str:
    """The folder of the MNIST files shipped inside the package."""
    return str(resources.files("jax_vae") / "mnist")
