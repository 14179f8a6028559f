"""Shared fixtures: the real bundled MNIST, loaded once per test session."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import pytest

# Two test workers share one accelerator where there is one: neither may take most of its
# memory up front (set before JAX starts).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One persistent compilation cache per test session (not the user's), for the commands the
# tests start and for the tests themselves: many compile the same small programs.
# The main process names it; its workers inherit the name (set before they start).
_CACHE = os.environ.setdefault(
    "JAX_VAE_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), f"jax-vae-test-xla-{os.getpid()}")
)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# The tests compile about a thousand small programs and run most of them briefly. Without
# LLVM's optimisation passes, and with XLA:CPU's older elemental emitters in place of its
# MLIR fusion emitters, a training program compiles in about a quarter of the time
# (benchmarks-free measure: 5.3 s -> 1.2-1.4 s for an AE's and a VAE's). The programs (the
# HLO that JAX and XLA's own passes produce) are the same; only the machine code differs.
# Code generation in one piece, not split over threads: the two workers keep both cores busy
# already, and the split costs about 20% more CPU per compile (0.56-0.66 s against 0.77-0.94
# s for an AE's and a VAE's epoch). Commands and benchmarks outside the tests keep XLA's
# defaults.
os.environ["XLA_FLAGS"] = " ".join(filter(None, (
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1",
)))

from jax_vae import data  # noqa: E402

_load_idx = data.load_idx


@functools.cache
def _bundled(verify_md5):
    dataset = _load_idx(data.bundled_data_dir(), verify_md5=verify_md5)
    for array in dataset[:4]:  # Shared by every test of this worker: nobody may change it.
        array.setflags(write=False)
    return dataset


def _load_idx_once(directory, *, verify_md5=False):
    """The bundled MNIST is decompressed and checked once per worker (about 0.3 s a time,
    and the runs the tests start in-process load it dozens of times); other folders, e.g.
    the tests' truncated or foreign copies, are read every time."""
    if os.path.abspath(directory) == os.path.abspath(data.bundled_data_dir()):
        return _bundled(verify_md5)
    return _load_idx(directory, verify_md5=verify_md5)


data.load_idx = data.idx.load_idx = _load_idx_once  # The package's name and the loaders'.


# The test files, longest first (CPU seconds measured on 2026-12-02: about 40 down to 5), as
# the workers take them (one file at a time): the last files to start are short, so the two
# workers finish together. (xdist's default order, most tests first, started the 2-test
# files of 40-50 s last, and one worker idled for 20 s at the end.) Unlisted files go last.
LONGEST_FIRST = ("benchmark", "sweeps", "sharding", "checkpoints", "runner", "own_images",
                 "tensorboard", "docs", "train", "models_losses", "extensions", "detector",
                 "scoring_metrics", "data", "baselines", "registry", "keys")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.stem.removeprefix("test_")
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # Stable: a file's own tests keep their order.


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
    return data.load_dataset("bundled")


@pytest.fixture(scope="session")
def split0(mnist) -> data.OneClassSplit:
    return data.one_class_split(mnist, normal_class=0)


def pytest_unconfigure(config):
    """The session's compilation cache goes with the session (the main process, last)."""
    if not hasattr(config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """helpers.SMALL_RUN, finished, with TensorBoard events and plots; tests only read it
    (one run per worker that needs it)."""
    from helpers import SMALL_RUN, run_single  # noqa: PLC0415

    from experiments.config import ExperimentConfig  # noqa: PLC0415

    out = tmp_path_factory.mktemp("small") / "run"
    run_single(ExperimentConfig(output_dir=str(out), **SMALL_RUN), plots=True)
    return out
