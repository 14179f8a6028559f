"""Your own code, loaded by name: a Python file or an importable module that registers models
(:func:`jax_vae.registry.register`) or anything else the run needs.

The commands' ``--import=FILE_OR_MODULE`` calls :func:`load`; a run records what it
loaded (:func:`load` returns the record: what was asked for, the file and its SHA-256), and
whatever reopens the run (``--resume``, ``--eval_only``, ``experiments.score``,
:meth:`jax_vae.detector.Detector.load`) calls :func:`load_recorded`, which refuses a file
that is missing or has changed since: a model's code is part of its results.

Loading is idempotent: the same file (same path and content) is executed once per process,
so a second load does not register its models twice.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from jax_vae.errors import Error


class PluginError(Error):
    """A file or module to import is missing, changed, or fails to import."""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or os.path.isfile(spec)


def _module_name(path: str, digest: str) -> str:
    """A name in ``sys.modules`` per (file, content): a stem alone could clash with a package
    of the same name, and a changed file is another module."""
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    tag = hashlib.sha256(f"{path}\0{digest}".encode()).hexdigest()[:12]
    return f"_jax_vae_import_{stem}_{tag}"


def load(spec: str) -> dict[str, str]:
    """Imports ``spec``: a Python file (``my_models.py``, ``path/to/file.py``) or a module on
    the path (``my_package.models``).

    Returns:
      The record of it: ``{"import": spec, "path": <absolute file>, "sha256": <its content's
      hash>}`` (for a package, its ``__init__.py``).

    Raises:
      PluginError: It is missing or raises while it is imported (the message names the file
        and the error).
    """
    if _is_file(spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise PluginError(f"{spec}: no such Python file")
        digest = _sha256(path)
        name = _module_name(path, digest)
        if name not in sys.modules:
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                del sys.modules[name]
                raise PluginError(f"{spec}: import failed: {_one_line(e)}") from e
        return {"import": spec, "path": path, "sha256": digest}
    try:
        module = importlib.import_module(spec)
    except (Exception, SystemExit) as e:
        raise PluginError(f"{spec}: import failed: {_one_line(e)}") from e
    path = getattr(module, "__file__", None)
    if not path:
        raise PluginError(f"{spec}: a namespace package has no file to record; import a module")
    return {"import": spec, "path": os.path.abspath(path), "sha256": _sha256(path)}


def load_all(specs: Iterable[str]) -> tuple[dict[str, str], ...]:
    """:func:`load` of each, in order."""
    return tuple(load(spec) for spec in specs)


def load_recorded(records: Iterable[Mapping[str, Any]], *, what: str = "the run") -> None:
    """Imports again what a run imported (the records :func:`load` returned), each file
    checked against its recorded content.

    Raises:
      PluginError: A file is missing, has changed, or fails to import.
    """
    for record in records:
        path, digest = record["path"], record["sha256"]
        if not os.path.isfile(path):
            raise PluginError(f"{what} imported {path} (--import={record['import']}), which is "
                              "missing; restore it to use the run")  # fmt: skip
        if _sha256(path) != digest:
            raise PluginError(
                f"{what} imported {path} (--import={record['import']}), which has changed since "
                f"(sha256 {digest[:12]}..., now {_sha256(path)[:12]}...); restore the run's "
                "version, or train a new run with the new one"
            )
        if _is_file(record["import"]):
            load(path)
        else:
            got = load(record["import"])
            if got["path"] != path:
                raise PluginError(f"--import={record['import']} now resolves to {got['path']}, "
                                  f"not {path} as when {what} ran")  # fmt: skip


def _one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
