"""Shared fixtures: the real bundled MNIST, loaded once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

# Two test workers share one accelerator where there is one: neither may take most of its
# memory up front (set before JAX starts).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The commands' persistent compilation cache: one per test session, not the user's.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-vae-test-xla-")

from jax_vae import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
    return data.load_dataset("bundled")


@pytest.fixture(scope="session")
def split0(mnist) -> data.OneClassSplit:
    return data.one_class_split(mnist, normal_class=0)
