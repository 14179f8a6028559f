"""Train an AE and a beta-VAE on one MNIST digit and report anomaly-detection metrics.

  python -m experiments.main --beta=2
  python -m experiments.main --normal_digit=3 --models=vae --vae_score=mc

Invalid settings exit with code 1 and one line on stderr, before any training.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from experiments.config import ConfigError, ExperimentConfig
from experiments.runner import run_experiment
from jax_vae.data import SOURCES, TFDS_DATASETS, DataError
from jax_vae.models import MODEL_NAMES
from jax_vae.scoring import VAE_SCORES
from jax_vae.train import NonFiniteLossError

_D = ExperimentConfig()

flags.DEFINE_float(
    "beta", _D.beta, "KL weight of the beta-VAE (relative to the summed squared error)."
)
flags.DEFINE_integer("normal_digit", _D.normal_digit, "The digit treated as normal (0-9).")
flags.DEFINE_integer("latent_dim", _D.latent_dim, "Latent size of both models.")
flags.DEFINE_list(
    "hidden_dims",
    [str(h) for h in _D.hidden_dims],
    "Encoder hidden widths; the decoder mirrors them.",
)
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Training batch size.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam learning rate.")
flags.DEFINE_integer("seed", _D.seed, "Seed of the split, initialization, shuffling and sampling.")
flags.DEFINE_float(
    "val_fraction",
    _D.val_fraction,
    "Fraction of normal training images held out for the threshold.",
)
flags.DEFINE_float(
    "anomaly_fraction", None, "Anomaly share of the test set; unset = full test set."
)
flags.DEFINE_float(
    "threshold_percentile",
    _D.threshold_percentile,
    "Percentile of held-out normal scores used as threshold.",
)
flags.DEFINE_list("models", list(_D.models), f"Models to train: {', '.join(MODEL_NAMES)}.")
flags.DEFINE_string("data_source", _D.data_source, f"One of {', '.join(SOURCES)}.")
flags.DEFINE_string("data_dir", None, "tfds data dir (tfds) or folder of IDX files (idx).")
flags.DEFINE_string(
    "dataset", _D.dataset, f"One of {', '.join(TFDS_DATASETS)} (not bundled: mnist only)."
)
flags.DEFINE_string(
    "output_dir", None, "New folder for the results; default runs/<time>_digit<d>_beta<b>."
)
flags.DEFINE_string("vae_score", _D.vae_score, f"VAE anomaly score: {', '.join(VAE_SCORES)}.")
flags.DEFINE_integer("mc_samples", _D.mc_samples, "Draws for --vae_score=mc or elbo.")
flags.DEFINE_integer(
    "chunk_size", _D.chunk_size, "Images per compiled scoring call (bounds memory)."
)

FLAGS = flags.FLAGS


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    # absl's default prints a usage block; keep it to one line and exit 1.
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).splitlines()[0])


def config_from_flags() -> ExperimentConfig:
    """Builds the config from parsed flags (one flag per config field)."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(ExperimentConfig)}
    try:
        values["hidden_dims"] = tuple(int(h) for h in values["hidden_dims"])
    except ValueError:
        raise ConfigError(
            f"--hidden_dims must be a comma list of integers, got {','.join(FLAGS.hidden_dims)}"
        ) from None
    values["models"] = tuple(m.strip().lower() for m in values["models"])
    return ExperimentConfig(**values)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # Per-epoch progress is the point of a long run.
    try:
        run_experiment(config_from_flags())
    except (ConfigError, DataError, NonFiniteLossError) as e:
        _fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
