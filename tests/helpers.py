"""Helpers of the tests: the pipeline in-process, the CLIs as subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tests' small models, one shape for all: the session's trainings and scorings reuse one
# another's compiled programs.
SIZES = dict(hidden_dims=(32,), latent_dim=4)
# A small run's data: digit 1 normal, a tenth of the test set anomalies.
SMALL_DATA = dict(normal_class=1, anomaly_fraction=0.1)
# The finished small run several test files read (conftest.small_run), and the command
# tests/test_checkpoints.py kills and resumes to equal it: an AE and a beta-VAE (beta 2),
# 3 epochs, a checkpoint each epoch.
SMALL_RUN = dict(epochs=3, beta=2.0, checkpoint_every=1, **SMALL_DATA, **SIZES)



def command_flags(settings: dict) -> tuple[str, ...]:
    """Settings as the command's flags (tuples comma-separated)."""
    return tuple(f"--{name}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                 for name, v in settings.items())  # fmt: skip


def _close(figure, path):
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close(figure)


def run_grid(grid, *, plots: bool = False, **kwargs):
    """The pipeline and its writer, as a command runs them (tables to /dev/null).

    The figures are built but, unless ``plots``, not drawn nor written: drawing is about
    half of a small run's time, and only the tests about plots read them.
    """
    from experiments import pipeline, report  # noqa: PLC0415

    skip = contextlib.nullcontext() if plots else mock.patch("experiments.plots.save", _close)
    with open(os.devnull, "w") as devnull, skip:
        return report.write(pipeline.run(grid, **kwargs), out=devnull)


def run_single(config, **kwargs):
    """``experiments.main`` in-process: the grid of one."""
    from experiments.config import SweepConfig  # noqa: PLC0415

    return run_grid(SweepConfig.single(config), **kwargs)


def cli_argv(module: str, *args: str) -> list[str]:
    """``python -m experiments.<module> ARGS`` (or ``<package.module>``), with Python's Ctrl-C
    handler installed even where the test runner was started with SIGINT ignored (a
    background CI job)."""
    module = module if "." in module else f"experiments.{module}"
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = [{module!r}, *sys.argv[1:]]; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", start, *args]


def cli(module: str, *args: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Runs ``python -m experiments.<module> ARGS`` (or ``<package.module>``) to the end."""
    return subprocess.run(
        cli_argv(module, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The single stderr line of a command that failed with ``code``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def fashion_mnist_dir() -> str | None:
    """The folder of the Fashion-MNIST IDX files, found as the loader finds a user's copy
    (``$JAX_VAE_DATA``, the Debian location), else beside the checkout (``../shared``, where
    CI has them); None when there is none (the tests that need it skip)."""
    from jax_vae import data  # noqa: PLC0415

    try:
        source, folder = data.find_dataset("fashion_mnist")
        if source == "idx":
            return folder
    except data.DataError:
        pass
    folder = os.path.join(ROOT, "..", "shared", "data", "fashion_mnist")
    return folder if os.path.isdir(folder) else None
