"""The main experiment as a library function: train, score, report, write files.

``experiments.main`` only parses flags into an :class:`ExperimentConfig` and
calls :func:`run_experiment`; tests and notebooks call it directly.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import plots
from experiments.config import ConfigError, ExperimentConfig, validate
from experiments.files import (
    atomic_write_bytes,
    claim_output_dir,
    new_run_dir,
    write_json,
    write_npz,
)
from jax_vae import sharding
from jax_vae.checkpoints import Checkpointer
from jax_vae.data import OneClassSplit, load_dataset, one_class_split, synthetic_anomalies
from jax_vae.losses import make_example_loss
from jax_vae.metrics import detection_metrics, separation_auroc, threshold_from_normals
from jax_vae.models import MODEL_NAMES, make_model
from jax_vae.scoring import make_reconstruct_fn, make_score_fn, map_chunked, score
from jax_vae.sharding import is_main_process
from jax_vae.train import init_states, stack_history, train

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "scikit-learn", "absl-py")
GRID_IMAGES = 8  # Normal and anomalous test images each in the reconstruction grid.
LATENT_POINTS = 5000  # Test images in the latent scatter plot.


def load_split(config: ExperimentConfig) -> OneClassSplit:
    """Loads the configured data source and builds the one-class split."""
    dataset = load_dataset(config.data_source, dataset=config.dataset, data_dir=config.data_dir)
    try:
        return one_class_split(
            dataset,
            normal_digit=config.normal_digit,
            val_fraction=config.val_fraction,
            anomaly_fraction=config.anomaly_fraction,
            seed=config.seed,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def model_keys(seed: int, name: str) -> tuple[jax.Array, jax.Array]:
    """The (training, scoring) keys of model ``name`` in a run with ``seed``.

    One stream per model, independent of which other models run, so a sweep
    that vmaps many seeds reproduces each seed's single run.
    """
    train_key, score_key = jax.random.split(
        jax.random.fold_in(jax.random.key(seed), MODEL_NAMES.index(name))
    )
    return train_key, score_key


def scoring_keys(score_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys of a model's validation, test and synthetic-anomaly scores."""
    val_key, test_key = jax.random.split(score_key)
    return val_key, test_key, jax.random.fold_in(score_key, 2)


def default_output_dir(config: ExperimentConfig, *, root: str = "runs") -> str:
    """A new folder ``runs/<time>_digit<d>_beta<b>`` that does not exist yet."""
    return new_run_dir(f"digit{config.normal_digit}_beta{config.beta:g}", root=root)


def environment_record() -> dict[str, Any]:
    """Package versions and devices, for reproducibility."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}" for d in jax.devices()],
        "backend": jax.default_backend(),
    }


def _split_record(split: OneClassSplit) -> dict[str, int]:
    return {
        "train": int(split.train_images.shape[0]),
        "val": int(split.val_images.shape[0]),
        "test": int(split.test_images.shape[0]),
        "test_anomalies": int(split.test_labels.sum()),
    }


def _checkpointer(run_dir: str, name: str, config: ExperimentConfig) -> Checkpointer | None:
    if not config.checkpoint_every:
        return None
    return Checkpointer(os.path.join(run_dir, "checkpoints", name), every=config.checkpoint_every)


def ensemble_keys(key: jax.Array, size: int) -> jax.Array:
    """[size] keys of an ensemble; member 0 uses ``key`` itself (a 1-member
    ensemble is the single model)."""
    return jnp.stack([key] + [jax.random.fold_in(key, i) for i in range(1, size)])


def _training_keys(config: ExperimentConfig, name: str) -> jax.Array:
    """Model ``name``'s training key, or its ensemble members' [n] keys."""
    train_key, _ = model_keys(config.seed, name)
    n = config.ensemble_size
    return ensemble_keys(train_key, n) if n > 1 else train_key


@dataclasses.dataclass
class _Results:
    """What a run or an evaluation collects per model, for the table and files."""

    split: OneClassSplit
    models: dict[str, Any] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def add(self, name, model, params, config: ExperimentConfig, history, **extra) -> None:
        """Scores a trained model (or ensemble) and records its results."""
        params = sharding.on_one_device(params)  # Score on one device.
        metrics, scores = _score_model(name, model, params, self.split, config)
        self.metrics[name] = {**metrics, **extra, "history": _history_record(history)}
        for part, values in scores.items():
            self.arrays[f"{name}_{part}"] = values
        self.params[name], self.models[name] = _first_member(params, config), model


def _score_model(
    name: str, model, params, split: OneClassSplit, config: ExperimentConfig
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of one trained model (or ensemble), and its scores by part.

    The parts are ``test``, ``val`` and ``synthetic`` (the synthetic
    anomalies made from the validation images).

    An ensemble's params are stacked on a leading axis; its score is the mean
    of its members' scores. The metrics include ``synthetic_auroc``: how well
    the scores separate the validation normals from synthetic corruptions of
    them (normal data only; the preset's selection signal).
    """
    _, score_key = model_keys(config.seed, name)
    score_fn = make_score_fn(
        model,
        vae_score=config.vae_score,
        mc_samples=config.mc_samples,
        likelihood=config.likelihood,
        smoothing=config.score_smoothing,
    )
    val_key, test_key, synthetic_key = scoring_keys(score_key)
    stacked = config.ensemble_size > 1
    if stacked:  # Every member sees the same sampling keys.
        val_key, test_key, synthetic_key = (
            jnp.stack([k] * config.ensemble_size) for k in (val_key, test_key, synthetic_key)
        )
    kwargs = dict(score_fn=score_fn, chunk_size=config.chunk_size, stacked=stacked)
    val_scores = score(params, split.val_images, key=val_key, **kwargs)
    test_scores = score(params, split.test_images, key=test_key, **kwargs)
    synthetic = synthetic_anomalies(split.val_images, seed=config.seed)
    synthetic_scores = score(params, synthetic, key=synthetic_key, **kwargs)
    if stacked:
        val_scores, test_scores = val_scores.mean(axis=0), test_scores.mean(axis=0)
        synthetic_scores = synthetic_scores.mean(axis=0)
    threshold = threshold_from_normals(val_scores, percentile=config.threshold_percentile)
    metrics = detection_metrics(split.test_labels, test_scores, threshold=threshold)
    metrics = {
        **metrics._asdict(),
        "synthetic_auroc": separation_auroc(val_scores, synthetic_scores),
    }
    return metrics, {"test": test_scores, "val": val_scores, "synthetic": synthetic_scores}


def _history_record(history) -> dict[str, list[float]]:
    # An ensemble's history [members, epochs] is averaged over its members.
    return {
        k: [float(v) for v in np.reshape(vals, (-1, np.shape(vals)[-1])).mean(axis=0)]
        for k, vals in history._asdict().items()
    }


def _first_member(params, config: ExperimentConfig):
    """The parameters of a single model, or of an ensemble's first member (for plots)."""
    return jax.tree.map(lambda a: a[0], params) if config.ensemble_size > 1 else params


def run_experiment(
    config: ExperimentConfig, *, out: TextIO | None = None, resume: bool = False
) -> dict[str, Any]:
    """Trains the configured models, scores the test set and writes the results.

    Args:
      config: The run's settings.
      out: Where the results table goes (stdout when None).
      resume: Continue the interrupted run in ``config.output_dir`` from its
        checkpoints (``config`` must be the run's own, see
        :func:`experiments.config.load_run_config`); the final parameters and
        metrics equal those of an uninterrupted run.

    Returns:
      The content of ``metrics.json``, plus ``output_dir``.

    Raises:
      ConfigError: A bad setting (checked before any training).
      DataError: Missing or corrupt data.
      CheckpointError: Unusable checkpoints when resuming.
      NonFiniteLossError: Training diverged (metrics.json is not written).
    """
    if resume:
        validate(dataclasses.replace(config, output_dir=None))
        if config.output_dir is None or not os.path.isdir(config.output_dir):
            raise ConfigError(f"--resume {config.output_dir} is not a run folder")
        if os.path.exists(os.path.join(config.output_dir, "metrics.json")):
            raise ConfigError(
                f"the run in {config.output_dir} is complete (metrics.json exists); "
                f"use --eval_only={config.output_dir} to re-score it"
            )
    else:
        validate(config)
    split = load_split(config)
    n_train = split.train_images.shape[0]
    if config.batch_size > n_train:
        raise ConfigError(
            f"--batch_size {config.batch_size} is larger than the training set ({n_train} images)"
        )
    output_dir = config.output_dir or default_output_dir(config)
    record = {
        **dataclasses.asdict(config),
        "output_dir": output_dir,
        **environment_record(),
        "data": _split_record(split),
    }
    writer = is_main_process()  # Multi-host: only process 0 writes files.
    if writer and not resume:
        claim_output_dir(output_dir, record)
    logging.info("run folder %s; %s", output_dir, record["data"])
    mesh = config_mesh(config, sharding.DATA)

    results = _Results(split)
    for name in config.models:
        model = config_model(config, name)
        logging.info(
            "training %s: hidden %s, latent %d, beta %g, %d epochs, %d images",
            name, config.hidden_dims, config.latent_dim, config.beta, config.epochs, n_train,
        )  # fmt: skip
        keys = _training_keys(config, name)
        result = train(
            keys,
            split.train_images,
            model=model,
            beta=jnp.full(keys.shape, config.beta) if keys.ndim else config.beta,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            loss_fn=make_example_loss(model, likelihood=config.likelihood),
            name=name,
            mesh=mesh,
            checkpointer=_checkpointer(output_dir, name, config),
            kl_warmup_epochs=config.kl_warmup_epochs,
        )
        results.add(
            name, model, result.params, config, result.history,
            train_seconds=result.train_seconds,
            compile_seconds=result.compile_seconds,
            images_per_second=result.epochs_run * n_train / result.train_seconds
            if result.epochs_run
            else None,
        )  # fmt: skip

    metrics_record = {"config": record, "models": results.metrics}
    _report(out, output_dir if writer else None, config, results, metrics_record)
    return {**metrics_record, "output_dir": output_dir}


def evaluate_run(config: ExperimentConfig, *, out: TextIO | None = None) -> dict[str, Any]:
    """Re-scores the saved models of a finished run, without training.

    Results go to a new folder ``eval-<time>_p<percentile>`` inside the run
    folder, beside (never over) the original results.

    Args:
      config: The run's own settings (``output_dir`` = the run folder), with
        any scoring settings changed: threshold percentile, anomaly fraction,
        VAE score, Monte Carlo samples, chunk size, data source.
      out: Where the results table goes (stdout when None).

    Returns:
      The content of the evaluation's ``metrics.json``, plus ``output_dir``.
    """
    run_dir = config.output_dir
    validate(dataclasses.replace(config, output_dir=None))
    split = load_split(config)
    label = f"p{config.threshold_percentile:g}"
    if config.anomaly_fraction is not None:
        label += f"_af{config.anomaly_fraction:g}"
    if config.score_smoothing:
        label += f"_s{config.score_smoothing:g}"
    eval_dir = new_run_dir(f"eval_{label}", root=run_dir)
    record = {
        **dataclasses.asdict(config),
        "output_dir": eval_dir,
        "evaluated_run": run_dir,
        **environment_record(),
        "data": _split_record(split),
    }
    results = _Results(split)
    for name in config.models:
        model = config_model(config, name)
        checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints", name))
        if checkpointer.latest_epoch() != config.epochs:
            raise ConfigError(
                f"{name} in {run_dir} has no final checkpoint (latest: epoch "
                f"{checkpointer.latest_epoch()} of {config.epochs}); finish it with --resume first"
            )
        template = init_states(
            _training_keys(config, name), split.train_images[0],
            model=model, learning_rate=config.learning_rate,
        )  # fmt: skip
        state, history = checkpointer.restore(template)
        results.add(name, model, state.params, config, stack_history(history))

    metrics_record = {"config": record, "models": results.metrics}
    writer = is_main_process()
    if writer:
        claim_output_dir(eval_dir, record)
    _report(out, eval_dir if writer else None, config, results, metrics_record)
    return {**metrics_record, "output_dir": eval_dir}


def config_model(config: ExperimentConfig, name: str):
    """Model ``name`` with the configured widths, latent size and architecture."""
    return make_model(
        name,
        hidden_dims=config.hidden_dims,
        latent_dim=config.latent_dim,
        architecture=config.architecture,
    )


def config_mesh(config: ExperimentConfig, layout: str) -> jax.sharding.Mesh | None:
    """The mesh over ``--num_devices`` devices (all when 0); None for a single device."""
    width = config.num_devices or jax.device_count()
    return sharding.make_mesh(layout, devices=jax.devices()[:width]) if width > 1 else None


def _report(out, output_dir, config, results: _Results, metrics_record) -> None:
    """Prints the table; writes every result file when ``output_dir`` is given."""
    table = format_table(results.metrics)
    (out or sys.stdout).write(table)
    if output_dir is None:  # Not the writing process.
        return
    split = results.split
    atomic_write_bytes(os.path.join(output_dir, "results.txt"), table.encode())
    write_npz(
        os.path.join(output_dir, "scores.npz"),
        {"labels": split.test_labels, "digits": split.test_digits, **results.arrays},
    )
    _write_plots(output_dir, config, results)
    write_json(os.path.join(output_dir, "metrics.json"), metrics_record)  # Last: marks completion.
    logging.info("results in %s", output_dir)


def _write_plots(output_dir, config, results: _Results) -> None:
    split, models, params_by_model = results.split, results.models, results.params
    model_results = results.metrics
    labels = split.test_labels
    scores = {name: results.arrays[f"{name}_test"] for name in models}
    plots.save(
        plots.roc_curves(labels, scores, {n: r["auroc"] for n, r in model_results.items()}),
        os.path.join(output_dir, "roc.png"),
    )
    plots.save(
        plots.score_histograms(
            labels, scores, {n: r["threshold"] for n, r in model_results.items()}
        ),
        os.path.join(output_dir, "score_histograms.png"),
    )
    rng = np.random.default_rng(config.seed)
    picks = np.concatenate(
        [
            rng.choice(
                np.flatnonzero(labels == 0),
                size=min(GRID_IMAGES, int((labels == 0).sum())),
                replace=False,
            ),
            rng.choice(
                np.flatnonzero(labels == 1), size=min(GRID_IMAGES, int(labels.sum())), replace=False
            ),
        ]
    )
    inputs = split.test_images[picks]
    reconstructions = {
        name: np.asarray(
            jax.jit(jax.vmap(make_reconstruct_fn(m), in_axes=(None, 0)))(
                params_by_model[name], inputs
            )
        )
        for name, m in models.items()
    }
    titles = [
        f"{d}{' (A)' if lab else ''}"
        for d, lab in zip(split.test_digits[picks], labels[picks], strict=True)
    ]
    plots.save(
        plots.reconstruction_grid(inputs, reconstructions, titles),
        os.path.join(output_dir, "reconstructions.png"),
    )
    plots.save(
        plots.training_curves({n: r["history"] for n, r in model_results.items()}),
        os.path.join(output_dir, "training_curves.png"),
    )
    if "vae" in models:
        subset = rng.permutation(labels.size)[:LATENT_POINTS]
        vae = models["vae"]
        means = map_chunked(
            lambda p, x, k: vae.apply(p, x, method="encode")[0],
            params_by_model["vae"],
            split.test_images[subset],
            chunk_size=config.chunk_size,
        )
        plots.save(
            plots.latent_scatter(means, split.test_digits[subset], config.normal_digit),
            os.path.join(output_dir, "latent.png"),
        )


TABLE_COLUMNS = (
    ("AUROC", "auroc", ".4f"),
    ("AUPRC", "auprc", ".4f"),
    ("F1", "f1", ".4f"),
    ("precision", "precision", ".4f"),
    ("recall", "recall", ".4f"),
    ("FPR", "fpr", ".4f"),
    ("threshold", "threshold", ".5f"),
    ("synth AUROC", "synthetic_auroc", ".4f"),
    ("train s", "train_seconds", ".2f"),
)


def format_table(model_results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side results table, one row per model."""
    # Each column: its title or a 7-character number, plus two spaces.
    widths = [max(len(title), 7) + 2 for title, _, _ in TABLE_COLUMNS]
    header = f"{'model':<6}" + "".join(
        f"{title:>{w}}" for (title, _, _), w in zip(TABLE_COLUMNS, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for name, r in model_results.items():
        cells = "".join(
            f"{r[key]:>{w}{fmt}}" if r.get(key) is not None else f"{'-':>{w}}"
            for (_, key, fmt), w in zip(TABLE_COLUMNS, widths, strict=True)
        )
        lines.append(f"{name.upper():<6}{cells}")
    return "\n".join(lines) + "\n"
