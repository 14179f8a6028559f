"""Run and sweep configurations and their validation (no data, no training: fast).

The command-line entry points check their flags with this module alone, before
importing the runner and its plotting and metrics libraries.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax

from jax_vae.data import SOURCES, TFDS_DATASETS
from jax_vae.losses import LIKELIHOODS
from jax_vae.models import ARCHITECTURES, MODEL_NAMES
from jax_vae.scoring import VAE_SCORES
from jax_vae.sharding import DATA, LAYOUTS


class ConfigError(ValueError):
    """An invalid setting; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of one run; field names are the runner's flag names."""

    beta: float = 1.0
    normal_digit: int = 0
    latent_dim: int = 20
    hidden_dims: tuple[int, ...] = (400,)
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1
    anomaly_fraction: float | None = None
    threshold_percentile: float = 95.0
    models: tuple[str, ...] = MODEL_NAMES
    data_source: str = "bundled"
    data_dir: str | None = None
    dataset: str = "mnist"
    output_dir: str | None = None
    vae_score: str = "mean"
    mc_samples: int = 10
    score_smoothing: float = 0.0  # Gaussian blur (pixels) of the residual; 0: plain MSE.
    chunk_size: int = 2048
    num_devices: int = 0  # 0: every visible device (data parallel when more than one).
    checkpoint_every: int = 5  # Epochs between checkpoints (and the last); 0: none.
    likelihood: str = "gaussian"  # Reconstruction term: summed squared error or BCE.
    kl_warmup_epochs: int = 0  # Linear KL warm-up over this many epochs; 0: none.
    ensemble_size: int = 1  # Seeds per model trained together; their scores are averaged.
    architecture: str = "mlp"  # "conv": strided convolutions with --hidden_dims channels.
    preset: str | None = None  # A named configuration (PRESETS); explicit flags override it.


# Named configurations. "best" is the candidate with the highest synthetic-anomaly
# AUROC (validation normals against stroke-sized corruptions of them: normal data
# only) over the grid of experiments/results/selection_e30 and selection_e60:
# AE and beta-VAE (beta 0.5, 1, 2), 30 or 60 epochs, residual smoothing 0-3 pixels,
# mean over digits 0-9 and seeds 0-2. Test AUROC played no part; see the README.
PRESETS: dict[str, dict[str, object]] = {
    "best": {"models": ("vae",), "beta": 0.5, "epochs": 60, "score_smoothing": 2.0},
}


def _finite(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"--{name} must be a finite number, got {value}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def check_output_dir(path: str) -> None:
    """Checks that ``path`` can hold a new run: absent or an empty, writable folder.

    Raises:
      ConfigError: It is a file, holds a previous run, or cannot be created.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--output_dir {path} exists and is not a directory")
        if os.listdir(path):
            raise ConfigError(
                f"--output_dir {path} already holds files (a previous run?); "
                "choose a new folder, results are never overwritten"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--output_dir {path} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output_dir {path} cannot be created ({parent} is not a writable folder)"
        )


def validate(config: ExperimentConfig, *, data_parallel: bool = True) -> None:
    """Checks every setting; raises ConfigError naming the first bad flag.

    Args:
      config: The settings.
      data_parallel: Batches are split over the devices, so ``batch_size``
        must divide by their number (a sweep spreading models needs not).
    """
    if config.preset is not None and config.preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {config.preset!r}")
    _finite("beta", config.beta)
    if config.beta < 0:
        raise ConfigError(f"--beta must be >= 0, got {config.beta}")
    if not 0 <= config.normal_digit <= 9:
        raise ConfigError(f"--normal_digit must be a digit 0-9, got {config.normal_digit}")
    if config.latent_dim < 1:
        raise ConfigError(f"--latent_dim must be >= 1, got {config.latent_dim}")
    if not config.hidden_dims or any(h < 1 for h in config.hidden_dims):
        raise ConfigError(
            f"--hidden_dims must be a comma list of positive widths, got {list(config.hidden_dims)}"
        )
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {config.batch_size}")
    _finite("learning_rate", config.learning_rate)
    if config.learning_rate <= 0:
        raise ConfigError(f"--learning_rate must be > 0, got {config.learning_rate}")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2**32), got {config.seed}")
    _finite("val_fraction", config.val_fraction)
    if not 0 < config.val_fraction < 1:
        raise ConfigError(
            f"--val_fraction must be in (0, 1) (the held-out normals set the threshold), "
            f"got {config.val_fraction}"
        )
    if config.anomaly_fraction is not None:
        _finite("anomaly_fraction", config.anomaly_fraction)
        if not 0 < config.anomaly_fraction < 1:
            raise ConfigError(
                f"--anomaly_fraction must be in (0, 1), got {config.anomaly_fraction}"
            )
    _finite("threshold_percentile", config.threshold_percentile)
    if not 0 < config.threshold_percentile <= 100:
        raise ConfigError(
            f"--threshold_percentile must be in (0, 100], got {config.threshold_percentile}"
        )
    if not config.models:
        raise ConfigError(f"--models must name at least one of {', '.join(MODEL_NAMES)}")
    for name in config.models:
        _choice("models", name, MODEL_NAMES)
    if len(set(config.models)) != len(config.models):
        raise ConfigError(f"--models lists a model twice: {','.join(config.models)}")
    _choice("data_source", config.data_source, SOURCES)
    _choice("dataset", config.dataset, TFDS_DATASETS)
    if config.data_source == "bundled" and config.dataset != "mnist":
        raise ConfigError(
            f"--dataset={config.dataset} needs --data_source=tfds or idx (only mnist is bundled)"
        )
    if config.data_source == "idx" and not config.data_dir:
        raise ConfigError("--data_source=idx needs --data_dir with the four IDX files")
    if config.data_dir and config.data_source == "idx" and not os.path.isdir(config.data_dir):
        raise ConfigError(f"--data_dir {config.data_dir} is not a directory")
    _choice("vae_score", config.vae_score, VAE_SCORES)
    if config.mc_samples < 1:
        raise ConfigError(f"--mc_samples must be >= 1, got {config.mc_samples}")
    _finite("score_smoothing", config.score_smoothing)
    if not 0 <= config.score_smoothing <= 10:
        raise ConfigError(
            f"--score_smoothing must be in [0, 10] pixels, got {config.score_smoothing}"
        )
    if config.score_smoothing and "vae" in config.models and config.vae_score in ("elbo", "iwae"):
        raise ConfigError(
            f"--score_smoothing needs a reconstruction score, not --vae_score={config.vae_score}"
        )
    if config.chunk_size < 1:
        raise ConfigError(f"--chunk_size must be >= 1, got {config.chunk_size}")
    _choice("likelihood", config.likelihood, LIKELIHOODS)
    _choice("architecture", config.architecture, ARCHITECTURES)
    if config.architecture == "conv" and 28 % 2 ** len(config.hidden_dims):
        raise ConfigError(
            "--architecture=conv halves 28x28 once per --hidden_dims entry: give 1 or 2 "
            f"channel counts, got {list(config.hidden_dims)}"
        )
    if config.kl_warmup_epochs < 0:
        raise ConfigError(f"--kl_warmup_epochs must be >= 0, got {config.kl_warmup_epochs}")
    if config.ensemble_size < 1:
        raise ConfigError(f"--ensemble_size must be >= 1, got {config.ensemble_size}")
    if config.checkpoint_every < 0:
        raise ConfigError(
            f"--checkpoint_every must be >= 0 (0 = no checkpoints), got {config.checkpoint_every}"
        )
    if config.num_devices < 0:
        raise ConfigError(f"--num_devices must be >= 0 (0 = all), got {config.num_devices}")
    if config.num_devices > jax.device_count():
        raise ConfigError(
            f"--num_devices {config.num_devices} exceeds the {jax.device_count()} visible devices"
        )
    width = config.num_devices or jax.device_count()
    if data_parallel and config.batch_size % width:
        raise ConfigError(
            f"--batch_size {config.batch_size} must divide by the data-parallel width "
            f"({width} devices; see --num_devices)"
        )
    if config.output_dir is not None:
        check_output_dir(config.output_dir)


def load_run_config(run_dir: str, *, flag: str) -> ExperimentConfig:
    """The settings a run folder was started with (its ``config.json``).

    Raises:
      ConfigError: The folder is missing or not a run folder of this project.
    """
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            record = json.load(f)
        values = {}
        for field in dataclasses.fields(ExperimentConfig):
            if field.name not in record:  # Added later; its default is the old behaviour.
                continue
            value = record[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
        return ExperimentConfig(**values)
    except FileNotFoundError:
        raise ConfigError(f"--{flag} {run_dir} is not a run folder (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--{flag} {run_dir}: unreadable config.json ({e!r})") from None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: ``base`` settings for every model, swept over these axes."""

    betas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    digits: tuple[int, ...] = tuple(range(10))
    # Residual smoothings scored on the same trained models (scoring only, no retraining).
    smoothings: tuple[float, ...] = (0.0,)
    split_seed: int = 0
    group_size: int | None = None  # Models vmapped together; None: backend default.
    mesh_layout: str = "models"  # With several devices: spread models, or split batches.
    base: ExperimentConfig = ExperimentConfig()


def parse_int_list(text: str, *, name: str) -> tuple[int, ...]:
    """Parses ``0-9`` or ``0,3,5`` or ``2-4,7`` into integers (in order, no repeats)."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part:
                lo, hi = part.split("-", 1)
                values.extend(range(int(lo), int(hi) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise ConfigError(f"--{name} must be integers or ranges like 0-9, got {text!r}") from None
    return _nonempty_unique(values, name=name, text=text)


def parse_float_list(text: str, *, name: str) -> tuple[float, ...]:
    """Parses ``0.5,1,2`` into floats (no repeats)."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a comma list of numbers, got {text!r}") from None
    return _nonempty_unique(values, name=name, text=text)


def _nonempty_unique(values, *, name: str, text: str) -> tuple:
    if not values:
        raise ConfigError(f"--{name} is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"--{name} lists a value twice: {text}")
    return tuple(values)


def validate_sweep(config: SweepConfig) -> None:
    """Checks every grid point with the runner's rules; ConfigError names the flag."""
    if not config.betas or not config.seeds or not config.digits:
        raise ConfigError("--betas, --seeds and --digits each need at least one value")
    for beta in config.betas:
        if not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"--betas must be finite numbers >= 0, got {beta}")
    for seed in (*config.seeds, config.split_seed):
        if not 0 <= seed < 2**32:
            raise ConfigError(f"--seeds and --split_seed must be in [0, 2**32), got {seed}")
    for digit in config.digits:
        if not 0 <= digit <= 9:
            raise ConfigError(f"--digits must be digits 0-9, got {digit}")
    if config.group_size is not None and config.group_size < 0:
        raise ConfigError(f"--group_size must be >= 0, got {config.group_size}")
    if config.mesh_layout not in LAYOUTS:
        raise ConfigError(
            f"--mesh_layout must be one of {', '.join(LAYOUTS)}, got {config.mesh_layout!r}"
        )
    if not config.smoothings:
        raise ConfigError("--score_smoothing needs at least one value")
    # The base settings at each smoothing, by the runner's rules.
    for smoothing in config.smoothings:
        validate(
            dataclasses.replace(config.base, output_dir=None, score_smoothing=smoothing),
            data_parallel=config.mesh_layout == DATA,
        )
    if config.base.ensemble_size != 1:
        raise ConfigError("--ensemble_size applies to experiments.main; a sweep varies --seeds")
    if config.base.output_dir is not None:
        check_output_dir(config.base.output_dir)


def load_sweep_config(run_dir: str) -> SweepConfig:
    """The settings a sweep folder was started with (its ``config.json``)."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            record = json.load(f)
        grid = {
            f.name: tuple(record[f.name]) if isinstance(record[f.name], list) else record[f.name]
            for f in dataclasses.fields(SweepConfig)
            if f.name != "base" and f.name in record
        }
        base = {
            f.name: tuple(record[f.name]) if isinstance(record[f.name], list) else record[f.name]
            for f in dataclasses.fields(ExperimentConfig)
            if f.name in record
        }
        return SweepConfig(**grid, base=ExperimentConfig(**{**base, "output_dir": run_dir}))
    except FileNotFoundError:
        raise ConfigError(f"--resume {run_dir} is not a sweep folder (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume {run_dir}: not a sweep's config.json ({e!r})") from None
