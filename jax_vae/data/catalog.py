"""Which source a dataset comes from (bundled, a user's copy, tfds, IDX files, a folder,
arrays) and loading it."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from jax_vae import vocab
from jax_vae.data import idx, images, tfds
from jax_vae.data.dataset import DataError, Dataset
from jax_vae.vocab import SOURCES

# Where a user's copy of the IDX files may be, for --data_source=auto: $JAX_VAE_DATA/<dataset>,
# then where Debian's and Ubuntu's packages (apt-get install dataset-fashion-mnist) put them.
DATA_ENV = "JAX_VAE_DATA"
SYSTEM_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}


def _has_idx_files(directory: str) -> bool:
    return all(
        any(os.path.isfile(os.path.join(directory, s + gz)) for gz in (".gz", ""))
        for s in idx.MNIST_FILES.values()
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
        return images.load_folder(data_dir or "", channels=channels, size=image_size)
    if dataset == "arrays":
        return images.load_arrays(data_dir or "")
    source, data_dir = _resolve(source, dataset, data_dir)
    if source == "bundled":
        if dataset != "mnist":
            raise DataError(
                f"the bundled source only has mnist, not {dataset}; use --data_source=tfds"
            )
        return idx.load_idx(idx.bundled_data_dir(), verify_md5=True)
    if source == "idx":
        if not data_dir:
            raise DataError("the idx source needs --data_dir with the four IDX files")
        return idx.load_idx(data_dir, verify_md5=dataset if dataset in idx.OFFICIAL_MD5 else False)
    if source == "tfds":
        return tfds.load_tfds(dataset, data_dir=data_dir)
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
