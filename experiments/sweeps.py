"""Sweeps: every (beta, seed) model of a digit trained as one compiled, vmapped program.

``experiments.sweep`` parses flags into a :class:`SweepConfig` and calls
:func:`run_sweep`. Per digit, the beta-VAEs of all (beta, seed) pairs train
together (keys and betas are vmapped arrays), and so do the AEs of all seeds;
digits run one after another (their training sets differ in size). The split
is held fixed by ``split_seed`` so that seeds vary only the models' randomness;
model (beta, seed) uses the same keys as ``experiments.main --seed=seed``, so
with ``split_seed == seed`` it reproduces that single run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import plots
from experiments.config import (
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    check_output_dir,
    validate,
    validate_sweep,
)
from experiments.files import atomic_write_bytes, claim_output_dir, new_run_dir, write_json
from experiments.runner import (
    config_mesh,
    config_model,
    environment_record,
    model_keys,
    scoring_keys,
)
from jax_vae.baselines import BASELINES, fit_baseline
from jax_vae.checkpoints import Checkpointer
from jax_vae.data import Dataset, load_dataset, one_class_split, synthetic_anomalies
from jax_vae.losses import make_example_loss
from jax_vae.metrics import detection_metrics, separation_auroc, threshold_from_normals
from jax_vae.scoring import make_score_fn, map_chunked
from jax_vae.sharding import MODELS, is_main_process
from jax_vae.train import train

CSV_FIELDS = (
    "model", "beta", "seed", "digit", "smoothing", "auroc", "auprc", "f1",
    "precision", "recall", "fpr", "threshold", "synthetic_auroc",
)  # fmt: skip


def _check_training_sizes(dataset: Dataset, config: SweepConfig) -> None:
    """The batch must fit every digit's training set; checked before any training."""
    for digit in config.digits:
        n_normal = int((dataset.train_labels == digit).sum())
        n_train = n_normal - int(round(config.base.val_fraction * n_normal))
        if config.base.batch_size > n_train:
            raise ConfigError(
                f"--batch_size {config.base.batch_size} is larger than the training set of "
                f"digit {digit} ({n_train} images)"
            )


def _grid(config: SweepConfig, name: str) -> list[tuple[float | None, int]]:
    """(beta, seed) of every model of one kind; the AE has no beta."""
    if name == "ae":
        return [(None, seed) for seed in config.seeds]
    return [(beta, seed) for beta in config.betas for seed in config.seeds]


def train_and_score_digit(
    dataset: Dataset, config: SweepConfig, digit: int, name: str, *, run_dir: str | None = None
) -> list[dict[str, Any]]:
    """Trains all models of one kind for one digit together; one result row each.

    With ``run_dir`` and ``base.checkpoint_every``, checkpoints go to
    ``run_dir/checkpoints/digit<d>_<name>`` and training resumes from them.
    """
    base = config.base
    try:
        split = one_class_split(
            dataset,
            normal_digit=digit,
            val_fraction=base.val_fraction,
            anomaly_fraction=base.anomaly_fraction,
            seed=config.split_seed,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    grid = _grid(config, name)
    mesh = config_mesh(base, config.mesh_layout)
    padded = list(grid)
    if mesh is not None and config.mesh_layout == MODELS:
        # Whole models per device: repeat the last grid point; its copies are dropped.
        padded += grid[-1:] * (-len(grid) % mesh.devices.size)
    keys = [model_keys(seed, name) for _, seed in padded]
    train_keys = jnp.stack([train_key for train_key, _ in keys])
    # As the runner: each model's validation, test and synthetic-anomaly scoring keys.
    val_keys, test_keys, synthetic_keys = jax.vmap(scoring_keys)(
        jnp.stack([score_key for _, score_key in keys])
    )
    betas = jnp.array([base.beta if beta is None else beta for beta, _ in padded], jnp.float32)
    model = config_model(base, name)
    logging.info(
        "digit %d: training %d %s model%s together",
        digit, len(grid), name, "" if len(grid) == 1 else "s",
    )  # fmt: skip
    result = train(
        train_keys,
        split.train_images,
        model=model,
        beta=betas,
        epochs=base.epochs,
        batch_size=base.batch_size,
        learning_rate=base.learning_rate,
        loss_fn=make_example_loss(model, likelihood=base.likelihood),
        kl_warmup_epochs=base.kl_warmup_epochs,
        name=f"{name} digit {digit}",
        group_size=config.group_size,
        mesh=mesh,
        checkpointer=Checkpointer(
            os.path.join(run_dir, "checkpoints", f"digit{digit}_{name}"),
            every=base.checkpoint_every,
        )
        if run_dir and base.checkpoint_every
        else None,
    )
    synthetic = synthetic_anomalies(split.val_images, seed=config.split_seed)
    score_fns = tuple(
        make_score_fn(
            model,
            vae_score=base.vae_score,
            mc_samples=base.mc_samples,
            likelihood=base.likelihood,
            smoothing=smoothing,
        )
        for smoothing in config.smoothings
    )

    def all_smoothings(params, x, key):
        # One program for every smoothing: XLA computes the shared
        # reconstruction (same params, image and key) once, not once per smoothing.
        return jnp.stack([fn(params, x, key) for fn in score_fns])

    kwargs = dict(chunk_size=base.chunk_size, stacked=True)
    # [K models, N images, smoothings] each.
    val_scores = map_chunked(
        all_smoothings, result.params, split.val_images, key=val_keys, **kwargs
    )
    test_scores = map_chunked(
        all_smoothings, result.params, split.test_images, key=test_keys, **kwargs
    )
    synthetic_scores = map_chunked(
        all_smoothings, result.params, synthetic, key=synthetic_keys, **kwargs
    )
    rows = []
    for s, smoothing in enumerate(config.smoothings):
        for k, (beta, seed) in enumerate(grid):
            val = val_scores[k, :, s]
            threshold = threshold_from_normals(val, percentile=base.threshold_percentile)
            metrics = detection_metrics(
                split.test_labels, test_scores[k, :, s], threshold=threshold
            )
            rows.append(
                {
                    "model": name, "beta": beta, "seed": seed, "digit": digit,
                    "smoothing": smoothing, **metrics._asdict(),
                    "synthetic_auroc": separation_auroc(val, synthetic_scores[k, :, s]),
                }
            )  # fmt: skip
    return rows


def summarize(rows: list[dict[str, Any]], *, metric: str = "auroc") -> dict[str, dict[str, Any]]:
    """Mean and std over seeds per configuration and digit, plus the mean over digits.

    The std of the digit mean is over seeds of each seed's mean over digits.

    Returns:
      ``{label: {"digits": {d: (mean, std)}, "mean": (mean, std), "model", "beta",
      "smoothing"}}`` with labels ``VAE b=<beta>`` for beta-VAEs and the
      upper-case model name otherwise (``AE``, ``PCA``, ...), followed by
      `` s=<smoothing>`` when any row is scored with a smoothed residual.
    """
    configs: dict[str, dict[str, Any]] = {}
    smoothed = any(r.get("smoothing") for r in rows)
    for r in rows:
        label = f"VAE b={r['beta']:g}" if r["model"] == "vae" else r["model"].upper()
        smoothing = r.get("smoothing")
        if smoothed and smoothing is not None:
            label += f" s={smoothing:g}"
        entry = configs.setdefault(
            label, {"model": r["model"], "beta": r["beta"], "smoothing": smoothing, "values": {}}
        )
        entry["values"].setdefault(r["digit"], {})[r["seed"]] = r[metric]
    summary = {}
    for label, entry in configs.items():
        values = entry["values"]
        digits = sorted(values)
        per_digit = {}
        for d in digits:
            by_seed = list(values[d].values())
            per_digit[d] = (float(np.mean(by_seed)), float(np.std(by_seed)))
        seeds = sorted(set.intersection(*(set(values[d]) for d in digits)))
        seed_means = [np.mean([values[d][s] for d in digits]) for s in seeds]
        summary[label] = {
            "model": entry["model"],
            "beta": entry["beta"],
            "smoothing": entry["smoothing"],
            "digits": per_digit,
            "mean": (float(np.mean(seed_means)), float(np.std(seed_means))),
        }
    return summary


def format_summary(summary: dict[str, dict[str, Any]], *, metric: str = "AUROC") -> str:
    """The summary as a table: one row per configuration, one column per digit."""
    digits = sorted({d for s in summary.values() for d in s["digits"]})
    title = f"{metric} mean+-std"
    width = max(len(title), *(len(label) for label in summary)) + 1
    header = f"{title:<{width}}" + "".join(f"{d:>16}" for d in digits) + f"{'mean':>16}"
    lines = [header, "-" * len(header)]
    for label, s in summary.items():
        cells = "".join(f"{_pm(*s['digits'][d]):>16}" for d in digits)
        lines.append(f"{label:<{width}}{cells}{_pm(*s['mean']):>16}")
    return "\n".join(lines) + "\n"


def select_by_synthetic_auroc(rows: list[dict[str, Any]]) -> str:
    """The configuration label with the highest mean synthetic AUROC over digits and seeds.

    The selection rule of the ``best`` preset: it uses normal data only (held-out
    normals and corruptions of them), never test labels.
    """
    return _highest_mean(summarize(rows, metric="synthetic_auroc"))


def _highest_mean(summary: dict[str, dict[str, Any]]) -> str:
    return max(summary, key=lambda label: summary[label]["mean"][0])


def _tables(
    rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], *, select: bool = True
) -> str:
    """The test AUROC table, the synthetic-anomaly AUROC (normal data only) table and,
    with ``select``, the configuration that the synthetic AUROC selects."""
    synthetic_summary = summarize(rows, metric="synthetic_auroc")
    synthetic = format_summary(synthetic_summary, metric="synth AUROC")
    if not select:
        return f"{format_summary(summary)}\n{synthetic}"
    chosen = _highest_mean(synthetic_summary)  # As select_by_synthetic_auroc(rows).
    return (
        f"{format_summary(summary)}\n{synthetic}\n"
        f"selected by synthetic AUROC (normal data only): {chosen} "
        f"(synth AUROC {synthetic_summary[chosen]['mean'][0]:.4f}, "
        f"test AUROC {summary[chosen]['mean'][0]:.4f})\n"
    )


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}+-{std:.4f}"


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV line per model, beta, seed, digit and smoothing (empty beta for the AE)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS})
    return buffer.getvalue()


def run_sweep(
    config: SweepConfig, *, out: TextIO | None = None, resume: bool = False
) -> dict[str, Any]:
    """Runs the grid and writes ``sweep.json``, ``sweep.csv``, ``summary.txt`` and plots.

    Args:
      config: The grid and the shared settings.
      out: Where the summary table goes (stdout when None).
      resume: Continue the interrupted sweep in ``config.base.output_dir``
        (``config`` from :func:`load_sweep_config`): finished digits are
        restored from their final checkpoints, the rest resume from theirs.

    Returns:
      The content of ``sweep.json``, plus ``output_dir``.

    Raises:
      ConfigError, DataError, NonFiniteLossError: As the runner.
    """
    base = config.base
    if resume:
        validate_sweep(dataclasses.replace(config, base=dataclasses.replace(base, output_dir=None)))
        if os.path.exists(os.path.join(base.output_dir, "sweep.json")):
            raise ConfigError(f"the sweep in {base.output_dir} is complete (sweep.json exists)")
    else:
        validate_sweep(config)
    dataset = load_dataset(base.data_source, dataset=base.dataset, data_dir=base.data_dir)
    _check_training_sizes(dataset, config)
    output_dir = base.output_dir or new_run_dir(f"sweep_{len(config.digits)}digits")
    record = {
        **{k: v for k, v in dataclasses.asdict(config).items() if k != "base"},
        **{
            k: v
            for k, v in dataclasses.asdict(base).items()
            if k not in ("beta", "normal_digit", "seed", "score_smoothing")
        },
        "output_dir": output_dir,
        **environment_record(),
    }
    writer = is_main_process()  # Multi-host: only process 0 writes files.
    if writer and not resume:
        claim_output_dir(output_dir, record)

    rows: list[dict[str, Any]] = []
    for digit in config.digits:
        for name in base.models:
            rows.extend(train_and_score_digit(dataset, config, digit, name, run_dir=output_dir))
    summary = summarize(rows)
    table = _tables(rows, summary)
    result = {"config": record, "rows": rows, "summary": summary}
    (out or sys.stdout).write(table)
    if writer:
        atomic_write_bytes(os.path.join(output_dir, "sweep.csv"), rows_to_csv(rows).encode())
        atomic_write_bytes(os.path.join(output_dir, "summary.txt"), table.encode())
        plots.save(plots.auroc_vs_beta(summary), os.path.join(output_dir, "auroc_vs_beta.png"))
        plots.save(plots.best_per_digit(summary), os.path.join(output_dir, "best_per_digit.png"))
        write_json(os.path.join(output_dir, "sweep.json"), result)  # Last: marks completion.
        logging.info("results in %s", output_dir)
    return {**result, "output_dir": output_dir}


def run_baselines(
    digits: tuple[int, ...],
    names: tuple[str, ...],
    base: ExperimentConfig,
    *,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Fits scikit-learn baselines on exactly the runner's split of each digit.

    Same protocol, threshold and metrics as the models (``base.seed`` seeds
    the split and the randomized baselines); writes ``baselines.json``,
    ``baselines.csv`` and ``summary.txt``.

    Args:
      digits: Normal digits.
      names: Baselines from :data:`jax_vae.baselines.BASELINES`.
      base: Split, threshold, data and output settings.
      out: Where the summary table goes (stdout when None).

    Returns:
      The content of ``baselines.json``, plus ``output_dir``.
    """
    if not names:
        raise ConfigError(f"--baselines must name at least one of {', '.join(BASELINES)}")
    for name in names:
        if name not in BASELINES:
            raise ConfigError(f"--baselines must be among {', '.join(BASELINES)}, got {name!r}")
    for digit in digits:
        if not 0 <= digit <= 9:
            raise ConfigError(f"--digits must be digits 0-9, got {digit}")
    validate(dataclasses.replace(base, output_dir=None))
    if base.output_dir is not None:
        check_output_dir(base.output_dir)
    dataset = load_dataset(base.data_source, dataset=base.dataset, data_dir=base.data_dir)
    output_dir = base.output_dir or new_run_dir(f"baselines_{len(digits)}digits")
    record = {
        "digits": digits,
        "baselines": names,
        **{k: getattr(base, k) for k in ("seed", "val_fraction", "anomaly_fraction",
                                        "threshold_percentile", "data_source", "dataset")},
        "output_dir": output_dir,
        **environment_record(),
    }  # fmt: skip
    claim_output_dir(output_dir, record)
    rows = []
    for digit in digits:
        try:
            split = one_class_split(
                dataset, normal_digit=digit, val_fraction=base.val_fraction,
                anomaly_fraction=base.anomaly_fraction, seed=base.seed,
            )  # fmt: skip
        except ValueError as e:
            raise ConfigError(str(e)) from None
        synthetic = synthetic_anomalies(split.val_images, seed=base.seed)
        for name in names:
            logging.info("digit %d: fitting %s on %d images", digit, name, len(split.train_images))
            scorer = fit_baseline(name, split.train_images, seed=base.seed)
            val_scores = scorer(split.val_images)
            threshold = threshold_from_normals(val_scores, percentile=base.threshold_percentile)
            metrics = detection_metrics(
                split.test_labels, scorer(split.test_images), threshold=threshold
            )
            rows.append(
                {
                    "model": name,
                    "beta": None,
                    "seed": base.seed,
                    "smoothing": None,
                    "digit": digit,
                    **metrics._asdict(),
                    "synthetic_auroc": separation_auroc(val_scores, scorer(synthetic)),
                }
            )
    summary = summarize(rows)
    table = _tables(rows, summary, select=False)
    atomic_write_bytes(os.path.join(output_dir, "baselines.csv"), rows_to_csv(rows).encode())
    atomic_write_bytes(os.path.join(output_dir, "summary.txt"), table.encode())
    result = {"config": record, "rows": rows, "summary": summary}
    write_json(os.path.join(output_dir, "baselines.json"), result)
    (out or sys.stdout).write(table)
    return {**result, "output_dir": output_dir}
