"""A user's images: image files, folders in the MVTec AD / anomalib layout, array files."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import time
import warnings

import numpy as np
from absl import logging

from jax_vae import rules
from jax_vae.data.dataset import DataError, Dataset
from jax_vae.data.split import as_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
NORMAL_FOLDERS = ("good", "normal")  # MVTec AD's and anomalib's names for normal images.
_DECODE_CHUNK = 64  # Files per task of the decoding threads (a chunk's pixels at a time).
PARALLEL_MIN_PIXELS = 128 * 128  # Images this large (pixels x channels) decode in threads.
PROGRESS_SECONDS = 5.0  # A load that takes longer logs a progress line this often.


def image_files(folder: str, *, recursive: bool = False,
                skipped: list[str] | None = None) -> list[str]:  # fmt: skip
    """The image files (PNG, JPEG, BMP, TIFF) in ``folder`` (and, with ``recursive``, in its
    subfolders), sorted by path: a folder's own files before its subfolders'. Hidden files
    and folders and files of other kinds are passed over; ``skipped`` collects them."""
    if not os.path.isdir(folder):
        raise DataError(f"cannot read {folder}: it is not a folder")
    found: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=_walk_error):
        dirs.sort()
        if skipped is not None:
            skipped += [os.path.join(root, d) + os.sep for d in dirs if d.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append(path)
            elif skipped is not None:
                skipped.append(path)
    return found


def _walk_error(error: OSError) -> None:
    raise DataError(f"cannot read {error.filename}: {error.strerror or error}")


def report_skipped(where: str, skipped: list[str]) -> None:
    """One INFO line counting the files a folder's reading passed over, naming a few."""
    if not skipped:
        return
    names = [os.path.relpath(p, where) for p in skipped]
    logging.info("%s: skipped %d file(s) that are hidden or not images (%s%s)", where,
                 len(names), ", ".join(names[:3]), ", ..." if len(names) > 3 else "")  # fmt: skip


# Pillow's modes by what a pixel holds: one value (gray, perhaps with alpha), and the range of
# the values of the modes that hold more than 8 bits (a 16-bit PNG opens as I;16).
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
WIDE_RANGES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
               "I": 65535.0, "F": 1.0}  # fmt: skip
_ORIENTATION = 0x0112  # EXIF: the camera's orientation; 5-8 turn the image by 90 degrees.


def _file_channels(mode: str) -> int:
    """Channels of a Pillow mode as the models see it: 1 (gray) or 3 (colour; alpha dropped)."""
    return 1 if mode in GRAY_MODES else 3


def _describe(mode: str) -> str:
    """A mode as messages name it: ``RGBA (alpha dropped)``, ``I;16 (16-bit gray)``."""
    notes = {"RGBA": "alpha dropped", "LA": "alpha dropped", "La": "alpha dropped",
             "PA": "alpha dropped", "P": "palette", "1": "1-bit", "F": "float",
             "I": "32-bit integer"}  # fmt: skip
    note = notes.get(mode) or ("16-bit gray" if mode.startswith("I;16") else "")
    return f"{mode} ({note})" if note else mode


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
            f"{paths[0]} is {first[1]}x{first[0]} with {first[2]} channel(s) "
            f"({_describe(first[3])}): too large for "
            f"the models (at most {rules.MAX_IMAGE_VALUES:,} values, e.g. 512x512x4); "
            "downscale with --image_size=H,W (image_size=(H, W))"
        )
    chunks = [paths[s : s + _DECODE_CHUNK] for s in range(0, len(paths), _DECODE_CHUNK)]
    task = functools.partial(_decode_chunk, reference=(paths[0], first), shape=shape,
                             fixed_size=size is not None, fixed_channels=bool(channels))
    # Threads where decoding dominates (Pillow decodes without the GIL); small images are
    # mostly Python per file, which threads only queue on the GIL for. Measured on 2 cores
    # (PNGs, images/s, 2 threads : 1): 28x28 0.6x, 64x64 0.7x, 96x96 RGB 1.4x, 128x128 1.3x,
    # 256x256 RGB 1.6x. (Processes would need a guarded __main__ in the caller's script.)
    large = math.prod(first[:3]) >= PARALLEL_MIN_PIXELS
    workers = min(os.cpu_count() or 1, len(chunks), 8) if large else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(task, chunks)  # In order: the first bad file is the one named.
        parts: list[np.ndarray] = []
        changed: list[str] = []
        start = last = time.monotonic()
        for pixels, resized in results:
            parts.append(pixels)
            changed += resized
            if time.monotonic() - last > PROGRESS_SECONDS:  # A long load says how far it is.
                last = time.monotonic()
                done = sum(len(p) for p in parts)
                logging.info("decoded %d of %d images (%.0f images/s)", done, len(paths),
                             done / (last - start))  # fmt: skip
    # 8-bit files stay uint8; with any wider file, every image is float32 in [0, 1].
    wide = any(p.dtype != np.uint8 for p in parts)
    out = np.concatenate([_as_float(p) if wide else p for p in parts])
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


def _header(path: str) -> tuple[int, int, int, str]:
    """(height, width, channels, mode) of an image file, from its header."""
    with _open(path) as image:
        return _shown(image)


def _shown(image) -> tuple[int, int, int, str]:
    """(height, width, channels, mode) of an opened image as it is shown (its EXIF
    orientation applied)."""
    height, width = image.size[1], image.size[0]
    try:
        turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001  (a malformed EXIF block: the image as stored)
        turned = False
    if turned:
        height, width = width, height
    return height, width, _file_channels(image.mode), image.mode


def _pixels(image, path: str, shape: tuple[int, int, int], fixed_size: bool) -> np.ndarray:
    """One image's pixels at ``shape``: uint8 for the 8-bit modes; float32 in [0, 1] for
    16-bit, 32-bit integer and float images (each by its real range: value / 65535, floats
    as they are), which must hold values in that range."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    image = ImageOps.exif_transpose(image)  # As a camera or phone meant it to be seen.
    height, width, channels = shape
    if image.mode in WIDE_RANGES:
        values = np.asarray(image, np.float32) / WIDE_RANGES[image.mode]
        if values.min() < 0 or values.max() > 1:
            top = WIDE_RANGES[image.mode]
            raise DataError(f"{path} ({_describe(image.mode)}): values from "
                            f"{values.min() * top:g} to {values.max() * top:g}, outside "
                            f"[0, {top:g}]")  # fmt: skip
        if values.shape != (height, width):
            values = np.asarray(Image.fromarray(values, mode="F").resize(
                (width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))  # fmt: skip
        return np.repeat(values[..., None], 3, axis=-1) if channels == 3 else values
    mode = "L" if channels == 1 else "RGB"
    if fixed_size:
        image.draft(mode, (width, height))  # JPEG: decode at a lower scale.
    if image.mode == "P":  # Through its palette's colours (and transparency, then dropped).
        image = image.convert("RGBA")
    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)


def _decode_chunk(paths: list[str], *, reference: tuple[str, tuple[int, int, int, str]],
                  shape: tuple[int, int, int], fixed_size: bool,
                  fixed_channels: bool) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Decodes files to ``shape``; returns the pixels (uint8, or float32 in [0, 1] where a
    file holds more than 8 bits) and the files resized or converted. Without ``fixed_size``
    (``fixed_channels``) a file must have the ``reference`` file's size (channels)."""
    from PIL import Image  # noqa: PLC0415

    first_path, first = reference
    pixels, changed = [], []
    for path in paths:
        with _open(path) as image:
            found = _shown(image)
            if not fixed_size and found[:2] != first[:2]:
                raise DataError(
                    f"{first_path} is {first[1]}x{first[0]} but {path} is {found[1]}x"
                    f"{found[0]}; give images of one size or resize them all with "
                    "--image_size=H,W (image_size=(H, W))"
                )
            if not fixed_channels and found[2] != first[2]:
                raise DataError(
                    f"{first_path} ({_describe(first[3])}) has {first[2]} channel(s) but {path} "
                    f"({_describe(found[3])}) has {found[2]}; convert them all with "
                    "--channels=1 or 3 (channels=1 or 3)"
                )
            if found[:3] != shape:
                changed.append(f"{os.path.basename(path)} ({found[1]}x{found[0]}x{found[2]})")
            try:
                pixels.append(_pixels(image, path, shape, fixed_size))
            except (OSError, Image.DecompressionBombError) as e:  # A truncated file.
                raise DataError(f"{path}: not a readable image ({e})") from None
    wide = any(p.dtype != np.uint8 for p in pixels)
    return np.stack([_as_float(p) if wide else p for p in pixels]), changed


def _as_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] (uint8 ones divided by 255)."""
    return pixels.astype(np.float32) / 255 if pixels.dtype == np.uint8 else pixels


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
    """Images to score, with a name each: a folder of image files (PNG, JPEG, BMP, TIFF; its
    subfolders too, each file named by its path in the folder, ``scratch/003.png``; hidden
    and other files skipped and counted), image files given as a comma list, or an array
    file (``.npy``, or ``.npz``: its ``images`` array, else its first), as stored.

    Args:
      source: The folder, files or array file.
      channels, size, warn: As :func:`decode_images` (image files only).

    Raises:
      DataError: A missing, empty, corrupt or mixed source, naming the file.
    """
    paths = [p.strip() for p in source.split(",") if p.strip()]
    if len(paths) == 1 and os.path.isdir(paths[0]):
        folder, skipped = paths[0], []
        paths = image_files(folder, recursive=True, skipped=skipped)
        report_skipped(folder, skipped)
        if not paths:
            raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        images = decode_images(paths, channels=channels, size=size, warn=warn)
        return [os.path.relpath(p, folder).replace(os.sep, "/") for p in paths], images
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

    ``directory/train/`` holds normal images (directly, or in ``train/good/``, at any depth);
    ``directory/test/`` is optional: ``test/good/`` (or ``normal/``) holds normal images
    and every other subfolder one kind of anomaly (its images at any depth). Hidden files
    and folders and files that are not images are skipped, and counted in one INFO line.
    The test labels are 0 for normal images and ``k`` for the k-th kind (by name);
    ``class_names`` names them.

    Args:
      directory: The dataset folder.
      channels, size: As :func:`decode_images`.

    Returns:
      The raw dataset; all training labels 0 (normal); no test images without ``test/``.

    Raises:
      DataError: No ``train/`` images; a ``test/`` without normal images or without anomaly
        kinds (AUROC needs both); any error of :func:`decode_images`.
    """
    if not os.path.exists(directory):
        raise DataError(f"{directory} does not exist")
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a folder")
    train_dir, skipped = os.path.join(directory, "train"), []
    train = image_files(train_dir, recursive=True, skipped=skipped) \
        if os.path.isdir(train_dir) else []  # fmt: skip
    if not train:
        raise DataError(f"{train_dir} holds no normal training images (put them in train/ or "
                        f"train/good/; {', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
    test_dir, tests, names = os.path.join(directory, "test"), [], ["normal"]
    if os.path.isdir(test_dir):
        # A kind is a folder directly under test/, its images at any depth below it; files
        # directly in test/ belong to no kind and are skipped.
        files = {}
        for entry in sorted(os.listdir(test_dir)):
            path = os.path.join(test_dir, entry)
            if entry.startswith(".") or not os.path.isdir(path):
                skipped.append(path + (os.sep if os.path.isdir(path) else ""))
            else:
                files[entry] = image_files(path, recursive=True, skipped=skipped)
        kinds = [k for k, found in files.items() if found]
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
        tests = [(label, p) for label, kind in enumerate(names) for p in files[kind]]
    report_skipped(directory, skipped)
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
