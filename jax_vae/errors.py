"""The errors a user can fix (bad arguments, data, checkpoints, a diverging run); no JAX.

Command-line tools catch :class:`Error` and print its one-line message.
"""

from __future__ import annotations


class Error(Exception):
    """Base class: the message says what is wrong and, where it can, what to do."""


class InvalidArgument(Error, ValueError):
    """An argument breaks a rule of :mod:`jax_vae.rules`; the message names it."""


class DataError(Error):
    """A data file or data source is missing, corrupt or unusable."""


class CheckpointError(Error):
    """A checkpoint folder is unreadable, foreign, or does not fit the model."""


class NonFiniteLossError(Error, RuntimeError):
    """Training produced a NaN or infinite loss."""
