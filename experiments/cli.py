"""Flags shared by the runner and the sweep, and their one-line error handling."""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import jax
from absl import flags, logging

from experiments.config import PRESETS, ConfigError, ExperimentConfig
from jax_vae.checkpoints import CheckpointError
from jax_vae.data import SOURCES, TFDS_DATASETS, DataError
from jax_vae.losses import LIKELIHOODS
from jax_vae.models import MODEL_NAMES
from jax_vae.scoring import VAE_SCORES
from jax_vae.sharding import initialize_distributed
from jax_vae.train import NonFiniteLossError

FLAGS = flags.FLAGS
_D = ExperimentConfig()

# Errors that end a run with one line on stderr and exit code 1.
USER_ERRORS = (ConfigError, DataError, NonFiniteLossError, CheckpointError)


# Help text of the flag of every ExperimentConfig field; the default comes from the field.
FLAG_HELP = {
    "beta": "KL weight of the beta-VAE (relative to the summed squared error).",
    "normal_digit": "The digit treated as normal (0-9).",
    "latent_dim": "Latent size of both models.",
    "hidden_dims": "Encoder hidden widths; the decoder mirrors them.",
    "epochs": "Training epochs.",
    "batch_size": "Training batch size.",
    "learning_rate": "Adam learning rate.",
    "seed": "Seed of the split, initialization, shuffling and sampling.",
    "val_fraction": "Fraction of normal training images held out for the threshold.",
    "anomaly_fraction": "Anomaly share of the test set; unset = full test set.",
    "threshold_percentile": "Percentile of held-out normal scores used as threshold.",
    "models": f"Models to train: {', '.join(MODEL_NAMES)}.",
    "data_source": f"One of {', '.join(SOURCES)}.",
    "data_dir": "tfds data dir (tfds) or folder of IDX files (idx).",
    "dataset": f"One of {', '.join(TFDS_DATASETS)} (bundled: mnist only).",
    "output_dir": "New folder for the results; default: a new folder under runs/.",
    "vae_score": f"VAE anomaly score: {', '.join(VAE_SCORES)}.",
    "mc_samples": "Draws for --vae_score=mc, elbo or iwae.",
    "score_smoothing": "Gaussian sigma (pixels) blurring the reconstruction residual; 0: MSE.",
    "chunk_size": "Images per compiled scoring call (bounds memory).",
    "num_devices": "Devices to use (0: all of them).",
    "checkpoint_every": "Epochs between checkpoints (0: none).",
    "likelihood": f"Reconstruction term: {', '.join(LIKELIHOODS)}.",
    "kl_warmup_epochs": "Linear KL warm-up epochs (0: none).",
    "ensemble_size": "Seeds per model, trained together; scores averaged.",
    "architecture": "mlp, or conv (--hidden_dims are then channels).",
    "preset": f"Named configuration ({', '.join(PRESETS)}); explicit flags override it.",
}
_DEFINERS = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
# Fields whose default is None, by the type their flag parses.
_NONE_DEFAULT_DEFINERS = {
    "anomaly_fraction": flags.DEFINE_float,
    "data_dir": flags.DEFINE_string,
    "output_dir": flags.DEFINE_string,
    "preset": flags.DEFINE_string,
}


def define_experiment_flags(*, exclude: Iterable[str] = ()) -> None:
    """Defines one flag per ExperimentConfig field, except those excluded."""
    assert set(FLAG_HELP) == {f.name for f in dataclasses.fields(ExperimentConfig)}
    for name, help_text in FLAG_HELP.items():
        if name in exclude:
            continue
        default = getattr(_D, name)
        if isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], help_text)
        elif default is None:
            _NONE_DEFAULT_DEFINERS[name](name, None, help_text)
        else:
            _DEFINERS[type(default)](name, default, help_text)


def experiment_config_from_flags(**overrides: Any) -> ExperimentConfig:
    """An ExperimentConfig from the parsed flags; fields without a flag from ``overrides``.

    With ``--preset``, the preset's values replace the defaults of the flags not
    given explicitly.
    """
    values = {}
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.name in FLAGS:  # Fields without a flag keep their defaults.
            values[field.name] = FLAGS[field.name].value
    # An unknown preset sets nothing here; validate() names it.
    for name, value in PRESETS.get(values.get("preset"), {}).items():
        if name not in overrides and not FLAGS[name].present:
            values[name] = value
    if "hidden_dims" in values:
        try:
            values["hidden_dims"] = tuple(int(h) for h in values["hidden_dims"])
        except ValueError:
            raise ConfigError(
                "--hidden_dims must be a comma list of integers, "
                f"got {','.join(values['hidden_dims'])}"
            ) from None
    if "models" in values:
        values["models"] = tuple(m.strip().lower() for m in values["models"])
    return ExperimentConfig(**values)


def explicit_flag_values() -> dict[str, Any]:
    """ExperimentConfig values of the flags given on the command line (or a flagfile)."""
    config = experiment_config_from_flags()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(ExperimentConfig)
        if f.name in FLAGS and FLAGS[f.name].present
    }


def fail(message: str) -> NoReturn:
    """Ends the program with one line on stderr and exit code 1."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors are one line and exit code 1 (not a usage block)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])


flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (else from the cluster)."
)
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")


# Libraries whose INFO lines are hidden unless --verbosity is given: Orbax logs about 500
# lines of checkpoint bookkeeping per default run, against 64 lines of our own.
QUIET_LIBRARIES = ("orbax",)


class LibraryInfoFilter(std_logging.Filter):
    """Drops records below WARNING that come from the source files of given packages."""

    def __init__(self, packages: Iterable[str]):
        super().__init__()
        self.fragments = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            fragment in record.pathname for fragment in self.fragments
        )


def quiet_libraries(packages: Iterable[str] = QUIET_LIBRARIES) -> None:
    """Hides the INFO (and debug) lines of ``packages`` on the absl handler; idempotent."""
    handler = logging.get_absl_handler()
    for old in [f for f in handler.filters if isinstance(f, LibraryInfoFilter)]:
        handler.removeFilter(old)
    handler.addFilter(LibraryInfoFilter(packages))


def start(argv: list[str]) -> None:
    """Common start of a command: no positional arguments; INFO logging by default
    (without the INFO lines of QUIET_LIBRARIES); joins a multi-host run when flags or
    the cluster environment say so."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        joined = initialize_distributed(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    except (RuntimeError, ValueError) as e:
        fail(f"could not join the multi-host run: {str(e).splitlines()[0]}")
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    jax.devices()  # Start the backend quietly: its INFO lines on absent TPUs etc. are noise.
    logging.set_verbosity(verbosity)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # Per-epoch progress is the point of a long run.
        quiet_libraries()
    if joined:
        logging.info("process %d of %d", jax.process_index(), jax.process_count())
