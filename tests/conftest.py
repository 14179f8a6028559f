"""Shared fixtures: the real bundled MNIST, loaded once per test session."""

from __future__ import annotations

import pytest

from jax_vae import data


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
    return data.load_dataset("bundled")


@pytest.fixture(scope="session")
def split0(mnist) -> data.OneClassSplit:
    return data.one_class_split(mnist, normal_digit=0)
