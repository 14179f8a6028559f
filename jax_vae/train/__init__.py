"""Training: the pure function of (key, images, hparams) (:mod:`~jax_vae.train.core`) and
the host driver that runs it with hooks, checkpoints and devices
(:mod:`~jax_vae.train.driver`)."""

from __future__ import annotations

from jax_vae.train.core import (
    ADAM,
    Terms,
    Trainer,
    TrainState,
    adam,
    check_args,
    check_padding,
    default_group_size,
    device_images,
    inject,
    make_train,
    num_batches,
    padded_sizes,
    permutation,
    sort_rounds,
    stack_history,
    state_template,
    vmap_models,
)
from jax_vae.train.driver import (
    Epoch,
    Hook,
    NonFiniteLossError,
    TrainResult,
    check_finite,
    log_progress,
    save_checkpoints,
    train,
)

__all__ = [
    "ADAM", "Epoch", "Hook", "NonFiniteLossError", "Terms", "TrainResult", "TrainState",
    "Trainer", "adam", "check_args", "check_finite", "check_padding", "default_group_size",
    "device_images", "inject", "log_progress", "make_train", "num_batches", "padded_sizes",
    "permutation", "save_checkpoints", "sort_rounds", "stack_history", "state_template",
    "train", "vmap_models",
]  # fmt: skip
