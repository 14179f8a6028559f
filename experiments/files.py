"""Atomic file writes: a crash never leaves a half-written result file."""

from __future__ import annotations

import datetime
import io
import json
import os
import tempfile
from typing import Any

import numpy as np

from experiments.config import ConfigError, check_output_dir


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


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes arrays as a compressed ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def new_run_dir(label: str, *, root: str = "runs") -> str:
    """A folder ``<root>/<time>_<label>`` that does not exist yet (not created)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{stamp}_{label}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def prepare_output_dir(path: str) -> None:
    """Creates a new run folder and checks that it takes files, before any data is loaded.

    Raises:
      ConfigError: The folder holds files, or cannot be created or written.
    """
    check_output_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
        atomic_write_bytes(os.path.join(path, ".probe"), b"")
        os.unlink(os.path.join(path, ".probe"))
    except OSError as e:
        raise ConfigError(f"--output_dir {path} cannot be written ({e.strerror or e})") from None


def claim_output_dir(path: str, config_record: dict[str, Any]) -> None:
    """Claims a prepared run folder by linking ``config.json`` into it.

    ``os.link`` fails if the file exists, so two runs started on the same
    folder cannot both claim it.

    Raises:
      ConfigError: The folder was claimed by another run.
    """
    staged = os.path.join(path, ".config.json.staged")
    write_json(staged, config_record)
    try:
        os.link(staged, os.path.join(path, "config.json"))
    except FileExistsError:
        raise ConfigError(f"--output_dir {path} was claimed by another run") from None
    finally:
        os.unlink(staged)
