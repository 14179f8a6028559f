"""MNIST-style data: loading (bundled, tfds, IDX files) and the one-class split.

The loaders return raw ``uint8`` arrays; :func:`one_class_split` turns them into
the float32 arrays the models train on. Everything here is NumPy and pure: the
same arguments always give the same arrays.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gzip
import hashlib
import math
import os
import socket
import struct
import threading
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from jax_vae import errors, rules, spec, vocab
from jax_vae.vocab import DATASETS as TFDS_DATASETS
from jax_vae.vocab import SOURCES

IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28

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
# Where a user's copy of the IDX files may be, for --data_source=auto: $JAX_VAE_DATA/<dataset>,
# then where Debian's and Ubuntu's packages (apt-get install dataset-fashion-mnist) put them.
DATA_ENV = "JAX_VAE_DATA"
SYSTEM_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

_IDX_UBYTE = 0x08
# tfds downloads MNIST from this host; it is only probed (one TCP connect,
# seconds) so that an offline machine fails fast instead of retrying for minutes.
_TFDS_PROBE_HOST = ("storage.googleapis.com", 443)


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


# --------------------------------------------------------------------------- IDX


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


# -------------------------------------------------------------------------- tfds


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


# ----------------------------------------------------------------------- dispatch


def _has_idx_files(directory: str) -> bool:
    return all(
        any(os.path.isfile(os.path.join(directory, s + gz)) for gz in (".gz", ""))
        for s in MNIST_FILES.values()
    )


def find_dataset(dataset: str) -> tuple[str, str | None]:
    """Where a user's copy of ``dataset`` is, as ``(source, data_dir)``.

    In order: the package (``mnist``); ``$JAX_VAE_DATA/<dataset>`` holding the
    four IDX files; the Debian/Ubuntu location (``fashion_mnist``:
    /usr/share/datasets/fashion-mnist, from ``apt-get install
    dataset-fashion-mnist``); tensorflow-datasets' prepared data (in
    ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).

    Raises:
      DataError: None of them has it; the message names the ways to get it.
    """
    if dataset == "mnist":
        return "bundled", None
    candidates = [os.path.join(os.environ[DATA_ENV], dataset)] if os.environ.get(DATA_ENV) else []
    candidates += [SYSTEM_DIRS[dataset]] if dataset in SYSTEM_DIRS else []
    for directory in candidates:
        if _has_idx_files(directory):
            return "idx", directory
    tfds_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    if os.path.isdir(os.path.join(tfds_dir, dataset)):
        return "tfds", tfds_dir
    debian = "apt-get install dataset-fashion-mnist (Debian/Ubuntu), " * (dataset in SYSTEM_DIRS)
    raise DataError(
        f"no copy of {dataset} found (looked in {', '.join(candidates + [tfds_dir])}); get it "
        f"with --data_dir=DIR (a folder of its four IDX files), {DATA_ENV}=DIR (a folder with "
        f"{dataset}/ inside), {debian}or --data_source=tfds where the network allows"
    )


def _resolve(source: str, dataset: str, data_dir: str | None) -> tuple[str, str | None]:
    """``auto``: ``idx`` with ``data_dir``, else where :func:`find_dataset` finds it."""
    if source == "auto":
        return ("idx", data_dir) if data_dir else find_dataset(dataset)
    return source, data_dir


def load_dataset(
    source: str = "auto", *, dataset: str = "mnist", data_dir: str | None = None,
    channels: int = 0, image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Loads raw images and labels from one of the supported sources.

    Args:
      source: ``auto`` (``idx`` with ``data_dir``, else :func:`find_dataset`),
        ``bundled`` (MNIST shipped with the package, offline, no TensorFlow),
        ``tfds`` (tensorflow-datasets) or ``idx`` (a folder of IDX files).
      dataset: The dataset name. ``bundled`` only has ``mnist``; ``idx`` checks
        the official MD5s of ``mnist`` and ``fashion_mnist``.
      data_dir: The tfds data dir (``tfds``) or the IDX folder (``idx``); for a user's
        own images (``dataset`` ``folder`` or ``arrays``), the folder or the array file.
      channels, image_size: A folder's images converted to this many channels (0: as the
        files are) and resized to (height, width) (None: as the files are).

    Returns:
      The raw dataset.

    Raises:
      DataError: Any problem with the source or its files.
    """
    if dataset == "folder":
        return load_folder(data_dir or "", channels=channels, size=image_size)
    if dataset == "arrays":
        return load_arrays(data_dir or "")
    source, data_dir = _resolve(source, dataset, data_dir)
    if source == "bundled":
        if dataset != "mnist":
            raise DataError(
                f"the bundled source only has mnist, not {dataset}; use --data_source=tfds"
            )
        return load_idx(bundled_data_dir(), verify_md5=True)
    if source == "idx":
        if not data_dir:
            raise DataError("the idx source needs --data_dir with the four IDX files")
        return load_idx(data_dir, verify_md5=dataset if dataset in OFFICIAL_MD5 else False)
    if source == "tfds":
        return load_tfds(dataset, data_dir=data_dir)
    raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")


def load_dataset_early(
    source: str = "auto", *, dataset: str = "mnist", data_dir: str | None = None,
    **options: Any,
) -> Callable[[], Dataset]:
    """Starts :func:`load_dataset` in a background thread; call the result to get it.

    Reading, decompressing and hashing the IDX files release the GIL, so the
    load overlaps a program's other start-up work (importing JAX and the
    rest). The returned function waits for the load and returns the dataset,
    or raises its error then (never earlier). The tfds source, which imports
    TensorFlow, loads when called instead. ``options``: as :func:`load_dataset`.
    """
    if dataset in vocab.LOCAL_DATASETS:
        source = "local"
    try:
        source, data_dir = _resolve(source, dataset, data_dir)
    except DataError:  # No copy found: load_dataset says so, when asked.
        return lambda: load_dataset(source, dataset=dataset, data_dir=data_dir)
    if source == "tfds":
        return lambda: load_dataset(source, dataset=dataset, data_dir=data_dir)
    future: concurrent.futures.Future = concurrent.futures.Future()

    def load() -> None:
        try:
            future.set_result(load_dataset(source, dataset=dataset, data_dir=data_dir,
                                           **options))
        except BaseException as e:  # Handed to the caller by result().
            future.set_exception(e)

    threading.Thread(target=load, name="load_dataset", daemon=True).start()
    return future.result


# ------------------------------------------------------------------ image files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
NORMAL_FOLDERS = ("good", "normal")  # MVTec AD's and anomalib's names for normal images.
_DECODE_CHUNK = 64  # Files per task of the decoding threads (a chunk's pixels at a time).
PARALLEL_MIN_PIXELS = 128 * 128  # Images this large (pixels x channels) decode in threads.


def image_files(folder: str) -> list[str]:
    """The image files (PNG, JPEG, BMP, TIFF) directly in ``folder``, sorted by name."""
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise DataError(f"cannot read {folder}: {e.strerror or e}") from None
    return sorted(os.path.join(folder, n) for n in names
                  if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."))  # fmt: skip


def _file_channels(mode: str) -> int:
    """Channels of a Pillow mode as the models see it: 1 (gray) or 3 (colour; alpha dropped)."""
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3


def decode_images(
    paths: list[str], *, channels: int = 0, size: tuple[int, int] | None = None,
    warn: bool = False,
) -> np.ndarray:
    """Decodes image files into one uint8 array: ``[N, H, W]`` (gray) or ``[N, H, W, 3]``.

    Images of 128x128 values or more decode in parallel threads (a core each, up to 8),
    smaller ones in this thread (see the comment in the code); chunk by chunk into the
    result, so the encoded files are never all in memory. Each file's header is read before
    its pixels: sizes and channels are checked without decoding.

    Args:
      paths: The files.
      channels: 1 (grayscale), 3 (RGB), or 0: as the files are (they must agree).
      size: ``(height, width)`` to resize every image to (bilinear, antialiased); None: the
        files' common size (they must agree, and be at most 512x512x4 values).
      warn: Log a warning saying how many images were resized or converted (else INFO).

    Raises:
      DataError: A missing, corrupt or non-image file; mixed sizes or channels; an image
        too large to take without ``size``. Each names the file(s).
    """
    from PIL import Image  # noqa: PLC0415  (only for image files)

    if not paths:
        raise DataError("no image files to read")
    # Pillow warns on stderr above 89 million pixels (and refuses twice that); what is
    # decoded here is resized at once, so a large image costs its size once per thread.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode_images(paths, channels=channels, size=size, warn=warn)


def _decode_images(paths: list[str], *, channels: int, size: tuple[int, int] | None,
                   warn: bool) -> np.ndarray:  # fmt: skip
    first = _header(paths[0])
    shape = (*(size or first[:2]), channels or first[2])
    if min(shape[:2]) < 2:
        raise DataError(f"{paths[0]} is {first[1]}x{first[0]}: the models need images of at "
                        "least 2x2 pixels")  # fmt: skip
    if math.prod(shape) > rules.MAX_IMAGE_VALUES:
        raise DataError(
            f"{paths[0]} is {first[1]}x{first[0]} with {first[2]} channel(s): too large for "
            f"the models (at most {rules.MAX_IMAGE_VALUES:,} values, e.g. 512x512x4); "
            "downscale with --image_size=H,W (image_size=(H, W))"
        )
    out = np.empty((len(paths), *shape[:2], *((3,) if shape[2] == 3 else ())), np.uint8)
    chunks = [paths[s : s + _DECODE_CHUNK] for s in range(0, len(paths), _DECODE_CHUNK)]
    task = functools.partial(_decode_chunk, reference=(paths[0], first), shape=shape,
                             fixed_size=size is not None, fixed_channels=bool(channels))
    # Threads where decoding dominates (Pillow decodes without the GIL); small images are
    # mostly Python per file, which threads only queue on the GIL for. Measured on 2 cores
    # (PNGs, images/s, 2 threads : 1): 28x28 0.6x, 64x64 0.7x, 96x96 RGB 1.4x, 128x128 1.3x,
    # 256x256 RGB 1.6x. (Processes would need a guarded __main__ in the caller's script.)
    large = math.prod(first) >= PARALLEL_MIN_PIXELS
    workers = min(os.cpu_count() or 1, len(chunks), 8) if large else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(task, chunks)  # In order: the first bad file is the one named.
        changed: list[str] = []
        for i, (pixels, resized) in enumerate(results):
            out[i * _DECODE_CHUNK : i * _DECODE_CHUNK + len(pixels)] = pixels
            changed += resized
    if changed:
        logging.log(logging.WARNING if warn else logging.INFO,
                    "%d of %d images resized or converted to %s (e.g. %s)", len(changed),
                    len(paths), "x".join(map(str, shape)), changed[0])  # fmt: skip
    return out


def _open(path: str):
    """``PIL.Image.open`` (lazy: the header only); unreadable files raise DataError."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  (only for image files)

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _header(path: str) -> tuple[int, int, int]:
    """(height, width, channels) of an image file, from its header."""
    with _open(path) as image:
        return image.size[1], image.size[0], _file_channels(image.mode)


def _decode_chunk(paths: list[str], *, reference: tuple[str, tuple[int, int, int]],
                  shape: tuple[int, int, int], fixed_size: bool,
                  fixed_channels: bool) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Decodes files to ``shape``; returns the pixels and the files resized or converted.
    Without ``fixed_size`` (``fixed_channels``) a file must have the ``reference`` file's
    size (channels)."""
    from PIL import Image  # noqa: PLC0415

    first_path, first = reference
    mode = "L" if shape[2] == 1 else "RGB"
    out = np.empty((len(paths), *shape[:2], *((3,) if shape[2] == 3 else ())), np.uint8)
    changed = []
    for i, path in enumerate(paths):
        with _open(path) as image:
            found = (image.size[1], image.size[0], _file_channels(image.mode))
            if not fixed_size and found[:2] != first[:2]:
                raise DataError(
                    f"{first_path} is {first[1]}x{first[0]} but {path} is {found[1]}x"
                    f"{found[0]}; give images of one size or resize them all with "
                    "--image_size=H,W (image_size=(H, W))"
                )
            if not fixed_channels and found[2] != first[2]:
                raise DataError(
                    f"{first_path} has {first[2]} channel(s) but {path} has {found[2]}; "
                    "convert them all with --channels=1 or 3 (channels=1 or 3)"
                )
            if found != shape:
                changed.append(f"{os.path.basename(path)} ({found[1]}x{found[0]}x{found[2]})")
            try:
                if fixed_size:
                    image.draft(mode, (shape[1], shape[0]))  # JPEG: decode at a lower scale.
                image = image.convert(mode)
                if image.size != (shape[1], shape[0]):
                    image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR,
                                         reducing_gap=2.0)  # fmt: skip
                out[i] = np.asarray(image)
            except (OSError, Image.DecompressionBombError) as e:  # A truncated file.
                raise DataError(f"{path}: not a readable image ({e})") from None
    return out, changed


def _read_array_file(path: str, key: str | None = None) -> np.ndarray:
    """A ``.npy`` file's array, or a ``.npz`` file's ``key`` (None: ``images``, else its
    first); pickled objects are refused."""
    try:
        arrays = np.load(path, allow_pickle=False)
        if isinstance(arrays, np.lib.npyio.NpzFile):
            with arrays:
                key = key or ("images" if "images" in arrays.files else arrays.files[0])
                return arrays[key]
        return arrays
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise DataError(f"{path}: not a readable array file ({e})") from None


def read_images(
    source: str, *, channels: int = 0, size: tuple[int, int] | None = None, warn: bool = False
) -> tuple[list[str], np.ndarray]:
    """Images to score, with a name each: a folder of image files (PNG, JPEG, BMP, TIFF;
    sorted by name), image files given as a comma list, or an array file (``.npy``, or
    ``.npz``: its ``images`` array, else its first), as stored (uint8 or float).

    Args:
      source: The folder, files or array file.
      channels, size, warn: As :func:`decode_images` (image files only).

    Raises:
      DataError: A missing, empty, corrupt or mixed source, naming the file.
    """
    paths = [p.strip() for p in source.split(",") if p.strip()]
    if len(paths) == 1 and os.path.isdir(paths[0]):
        folder = paths[0]
        paths = image_files(folder)
        if not paths:
            raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if not paths:
        raise DataError("no images given")
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
    if len(paths) == 1 and paths[0].lower().endswith(ARRAY_SUFFIXES):
        arrays = _read_array_file(paths[0])
        name = os.path.basename(paths[0])
        return [f"{name}[{i}]" for i in range(len(arrays))], arrays
    images = decode_images(paths, channels=channels, size=size, warn=warn)
    return [os.path.basename(p) for p in paths], images


def load_folder(
    directory: str, *, channels: int = 0, size: tuple[int, int] | None = None
) -> Dataset:
    """A user's images in the layout of MVTec AD and anomalib's ``Folder``.

    ``directory/train/`` holds normal images (directly, or in ``train/good/``);
    ``directory/test/`` is optional: ``test/good/`` (or ``normal/``) holds normal images
    and every other subfolder one kind of anomaly. The test labels are 0 for normal images
    and ``k`` for the k-th kind (by name); ``class_names`` names them.

    Args:
      directory: The dataset folder.
      channels, size: As :func:`decode_images`.

    Returns:
      The raw dataset; all training labels 0 (normal); no test images without ``test/``.

    Raises:
      DataError: No ``train/`` images; a ``test/`` without normal images or without anomaly
        kinds (AUROC needs both); any error of :func:`decode_images`.
    """
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a folder")
    train_dir = os.path.join(directory, "train")
    train = image_files(train_dir) if os.path.isdir(train_dir) else []
    for normal in NORMAL_FOLDERS:
        if os.path.isdir(os.path.join(train_dir, normal)):
            train += image_files(os.path.join(train_dir, normal))
    if not train:
        raise DataError(f"{train_dir} holds no normal training images (put them in train/ or "
                        f"train/good/; {', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
    test_dir, tests, names = os.path.join(directory, "test"), [], ["normal"]
    if os.path.isdir(test_dir):
        kinds = sorted(k for k in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, k))
                       and image_files(os.path.join(test_dir, k)))  # fmt: skip
        normal = [k for k in kinds if k.lower() in NORMAL_FOLDERS]
        anomalies = [k for k in kinds if k.lower() not in NORMAL_FOLDERS]
        if len(normal) != 1 or not anomalies:
            raise DataError(
                f"{test_dir} needs one folder of normal images (good/ or normal/) and at least "
                f"one of anomalies (any other name): AUROC needs both; it has "
                f"{', '.join(k + '/' for k in kinds) or 'no image folders'}; or leave test/ "
                "out to train and set the threshold only"
            )
        names = [normal[0], *anomalies]
        tests = [(label, p) for label, kind in enumerate(names)
                 for p in image_files(os.path.join(test_dir, kind))]  # fmt: skip
    images = decode_images(train + [p for _, p in tests], channels=channels, size=size)
    logging.info("%s: %d training images, %d test images (%s), each %s", directory, len(train),
                 len(tests), ", ".join(names), "x".join(map(str, images.shape[1:])))  # fmt: skip
    return Dataset(
        train_images=images[: len(train)], train_labels=np.zeros(len(train), np.uint8),
        test_images=images[len(train):],
        test_labels=np.array([label for label, _ in tests], np.uint8).reshape(-1),
        class_names=tuple(names),
    )  # fmt: skip


def load_arrays(path: str) -> Dataset:
    """A user's images as arrays: a ``.npy`` file of normal training images, or a ``.npz``
    file with ``train_images`` and optionally ``test_images`` and ``test_labels`` (0: normal,
    ``k`` > 0: the k-th kind of anomaly; names in an optional ``kinds`` array). Images are
    ``[N, H, W]`` or ``[N, H, W, C]``, uint8 (0-255) or floats in [0, 1].

    Raises:
      DataError: A missing or unreadable file, missing arrays, or mismatched shapes.
      InvalidArgument: Images of another dtype, shape or range (:func:`as_images`).
    """
    if not os.path.isfile(path) or not path.lower().endswith(ARRAY_SUFFIXES):
        raise DataError(f"{path} is not a .npy or .npz file")
    if path.lower().endswith(".npy"):
        train, test, labels, kinds = _read_array_file(path), None, None, None
    else:
        with np.load(path, allow_pickle=False) as arrays:
            files = set(arrays.files)
            if "train_images" not in files:
                raise DataError(f"{path} has no train_images array (it has {sorted(files)})")
            train = arrays["train_images"]
            test = arrays["test_images"] if "test_images" in files else None
            labels = arrays["test_labels"] if "test_labels" in files else None
            kinds = [str(k) for k in arrays["kinds"]] if "kinds" in files else None
        if (test is None) != (labels is None):
            raise DataError(f"{path}: give test_images and test_labels together")
    for name, images in (("train_images", train), ("test_images", test)):
        if images is None:
            continue
        if images.ndim not in (3, 4):
            raise DataError(f"{path}: {name} must be [N, H, W] or [N, H, W, C], got "
                            f"{list(images.shape)}")  # fmt: skip
        try:  # The dtype, and the range of floats (uint8 is converted only when used).
            as_images(images if images.dtype != np.uint8 else images[:1], name=name)
        except rules.InvalidArgument as e:
            raise DataError(f"{path}: {e}") from None
    if test is None:
        test, labels = train[:0], np.zeros(0, np.uint8)
    if test.shape[1:] != train.shape[1:] or labels.shape != test.shape[:1]:
        raise DataError(f"{path}: test_images {list(test.shape)} and test_labels "
                        f"{list(labels.shape)} do not match train_images {list(train.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError(f"{path}: test_labels must be integers, 0 for normal images")
    count = int(labels.max()) if labels.size else 0
    if labels.size and (count == 0 or not (labels == 0).any()):
        raise DataError(f"{path}: test_labels need normal (0) and anomalous (> 0) images: "
                        "AUROC needs both")  # fmt: skip
    names = ["normal", *(kinds or [f"anomaly {k}" for k in range(1, count + 1)])]
    if len(names) <= count:
        raise DataError(f"{path}: kinds names {len(names) - 1} kinds, test_labels go to {count}")
    if train.ndim == 4 and train.shape[3] == 1:  # One channel: kept as [N, H, W].
        train, test = train[..., 0], test[..., 0]
    return Dataset(train, np.zeros(len(train), np.uint8), test, labels.astype(np.int64),
                   class_names=tuple(names))  # fmt: skip


# -------------------------------------------------------------------------- split


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
