"""The run folder: its one owner. Every file of it is written and read here.

A run (``experiments.main``), a sweep or a baselines run is a folder::

    config.json             the settings, data splits, environment and imports (first)
    checkpoints/<class>_<model>/   Orbax checkpoints of each model kind (jax_vae.checkpoints)
    scores/<class>_<model>.npz     what the model's scores fit: banks, fusion statistics
    tensorboard/            event files (experiments.tensorboard)
    results.txt, scores.npz, *.png     a single run's table, scores and plots
    <kind>.csv, summary.txt            a sweep's or baselines run's rows and summary
    metrics.json | sweep.json | baselines.json    written last: the run is complete
    <time>_eval_*/, <time>_score/      --eval_only's and experiments.score's own folders

A saved :class:`jax_vae.detector.Detector` is a folder of the same kind (config.json with
a ``detector`` entry, ``checkpoints/<model>/``, ``scores/<model>.npz``). Writes are atomic:
a crash never leaves a half-written file. Reading raises :class:`RunFolderError` (plain;
the commands say which flag named the folder).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from jax_vae import vocab
from jax_vae.errors import CheckpointError

CONFIG = "config.json"
METRICS = "metrics.json"  # A single run's completion file.
SCORES = "scores.npz"
KINDS = ("run", "sweep", "baselines")


class RunFolderError(CheckpointError):
    """A run folder (or one of its files) is missing, unreadable or of another kind."""


# ---- Paths. ----


def completion_file(kind: str) -> str:
    """The file a run of ``kind`` writes last: ``metrics.json``, ``sweep.json`` ..."""
    return METRICS if kind == "run" else f"{kind}.json"


def is_complete(run: str, kind: str = "run") -> bool:
    """Whether the run in ``run`` finished (its completion file exists)."""
    return os.path.exists(os.path.join(run, completion_file(kind)))


def model_slug(dataset: str, normal_class: int, model: str) -> str:
    """A model kind's name in the folder: ``digit3_vae``; a detector's: its model."""
    return f"{vocab.class_slug(dataset, normal_class)}_{model}"


def checkpoint_dir(run: str, slug: str) -> str:
    """The checkpoints of one model kind (:func:`model_slug`)."""
    return os.path.join(run, "checkpoints", slug)


def fitted_scores_path(run: str, slug: str) -> str:
    """What one model kind's scores fit (:func:`write_fitted_scores`)."""
    return os.path.join(run, "scores", f"{slug}.npz")


def tensorboard_dir(run: str) -> str:
    """The run's TensorBoard event files."""
    return os.path.join(run, "tensorboard")


def new_run_dir(label: str, *, root: str = "runs") -> str:
    """A folder ``<root>/<time>_<label>`` that does not exist yet (not created)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{stamp}_{label}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


# ---- Writing. ----


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing.
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays as a compressed ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def claim(run: str, config: Mapping[str, Any]) -> None:
    """Claims a new, empty run folder by linking its ``config.json`` into it: ``os.link``
    fails if the file exists, so two runs started on one folder cannot both claim it.

    Raises:
      RunFolderError: Another run claimed the folder.
    """
    staged = os.path.join(run, f".{CONFIG}.staged")
    write_json(staged, config)
    try:
        os.link(staged, os.path.join(run, CONFIG))
    except FileExistsError:
        raise RunFolderError(f"{run} was claimed by another run") from None
    finally:
        os.unlink(staged)


def write_config(run: str, config: Mapping[str, Any]) -> None:
    """Writes ``config.json`` of a folder made by its writer (a saved detector)."""
    write_json(os.path.join(run, CONFIG), config)


def write_scores(run: str, arrays: Mapping[str, np.ndarray]) -> None:
    """A single run's ``scores.npz``: ``labels``, ``classes`` and ``<model>_<part>``."""
    write_npz(os.path.join(run, SCORES), arrays)


def complete(run: str, kind: str, record: Mapping[str, Any]) -> None:
    """Writes the completion file, last: the run is finished."""
    write_json(os.path.join(run, completion_file(kind)), record)


def write_fitted_scores(run: str, slug: str, fitted: Mapping[str, Any],
                        stats: Mapping[str, Any]) -> None:  # fmt: skip
    """What one model's scores fit (:class:`jax_vae.scores.Scorer`): the banks by component
    label, and each fused component's mean and standard deviation over the held-out
    normals. Nothing is written when nothing was fit (the plain residual)."""
    if not fitted and not stats:
        return
    arrays = {}
    for label, bank in fitted.items():  # A bank, or a dict of arrays (e.g. an SVD's).
        parts = bank.items() if isinstance(bank, Mapping) else ((None, bank),)
        arrays.update({f"fitted/{label}" + (f"/{name}" if name else ""): np.asarray(a)
                       for name, a in parts})  # fmt: skip
    for label, (mean, std) in stats.items():
        arrays[f"mean/{label}"], arrays[f"std/{label}"] = np.asarray(mean), np.asarray(std)
    path = fitted_scores_path(run, slug)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_npz(path, arrays)


# ---- Reading. ----


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunFolderError(f"{os.path.dirname(path) or '.'} is not {what} (no "
                             f"{os.path.basename(path)})") from None  # fmt: skip
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{os.path.dirname(path) or '.'}: unreadable "
                             f"{os.path.basename(path)} ({e!r})") from None  # fmt: skip


def read_config(run: str) -> dict[str, Any]:
    """The ``config.json`` of a run, sweep or saved detector folder."""
    return _read_json(os.path.join(run, CONFIG), "a run folder")


def read_completion(run: str, kind: str = "run") -> dict[str, Any]:
    """The completion file of a finished run (``metrics.json``) or grid (``sweep.json``)."""
    return _read_json(os.path.join(run, completion_file(kind)), f"a finished {kind}")


def kind_of(config: Mapping[str, Any]) -> str:
    """``detector``, ``run`` or ``grid`` (a sweep or baselines run), from its config."""
    if "detector" in config:
        return "detector"
    return "grid" if "betas" in config else "run"


def read_fitted_scores(run: str, slug: str) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """What :func:`write_fitted_scores` wrote: (banks, statistics) by component label; both
    empty where nothing was fit."""
    path = fitted_scores_path(run, slug)
    if not os.path.exists(path):
        return {}, {}
    try:
        with np.load(path) as f:
            arrays = dict(f)
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable ({e})") from None
    fitted: dict[str, Any] = {}
    for key, value in arrays.items():
        if key.startswith("fitted/"):
            _, label, *name = key.split("/")
            if name:  # One array of a dict.
                fitted.setdefault(label, {})[name[0]] = value
            else:
                fitted[label] = value
    stats = {k.split("/", 1)[1]: (v, arrays[f"std/{k.split('/', 1)[1]}"])
             for k, v in arrays.items() if k.startswith("mean/")}  # fmt: skip
    return fitted, stats
