"""One writer for every command: tables on stdout, result files, plots.

A single run writes ``results.txt``, ``scores.npz``, its plots and, last,
``metrics.json``; a sweep or a baselines run writes ``<kind>.csv``,
``summary.txt`` (and a sweep its plots) and, last, ``<kind>.json``. The last
file marks the run complete. Only process 0 writes.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from typing import Any, TextIO

import numpy as np
from absl import logging

from experiments.pipeline import Result
from experiments.tensorboard import Board
from jax_vae import health, registry, runs, sharding, vocab
from jax_vae.runs import atomic_write_bytes

CSV_FIELDS = (
    "model", "beta", "learning_rate", "seed", "normal_class", "smoothing", "score", "auroc",
    "auprc", "f1",
    "precision", "recall", "fpr", "threshold", "held_out", "fpr_low", "fpr_high",
    "synthetic_auroc", "health",
)  # fmt: skip
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
IDENTITY = ("model", "beta", "learning_rate", "seed", "normal_class", "smoothing", "score")


def write(result: Result, *, out: TextIO | None = None) -> dict[str, Any]:
    """Prints the result's table and writes its files (process 0).

    Returns:
      The content of the completion file (``metrics.json`` or ``<kind>.json``),
      plus ``output_dir``.
    """
    path, timings = result.output_dir, result.timings
    writer = sharding.is_main_process()
    if result.kind == "run":
        identity = IDENTITY + tuple(result.grid.hparams)
        models = {r["model"]: {k: v for k, v in r.items() if k not in identity}
                  for r in result.rows}  # fmt: skip
        record = {"config": result.record, "models": models}
        trained = {n: (r["health"], r["synthetic_auroc"]) for n, r in models.items()
                   if "health" in r}  # fmt: skip
        if len(trained) > 1:  # Which of them to use, from normal data and health alone.
            name, why = health.recommend(trained)
            record["recommended"] = {"model": name, "why": why}
        table = _run_header(result.grid.base) + format_table(models) + _kinds_table(models)
        if result.rows and result.rows[0]["auroc"] is None:
            table += _no_test_note(result)
        table += _score_note(models)
        table += _threshold_note(models, result.grid.base.threshold_percentile)
        table += _health_note(result.rows)
        if "recommended" in record:
            table += (f"\nrecommended: {record['recommended']['model'].upper()}, "
                      f"{record['recommended']['why']} (Detector.load takes it)\n")
    else:
        axes = tuple(result.grid.hparams)
        summary = summarize(result.rows, axes=axes)
        record = {"config": result.record, "rows": result.rows, "summary": summary}
        names = _labels(result.grid.base.dataset)  # Columns: "digit 3", "Sandal".
        table = _tables(result.rows, summary, select=result.kind == "sweep", names=names,
                        axes=axes) + _health_note(result.rows, names, axes)  # fmt: skip
    (out or sys.stdout).write(table)
    if writer:
        if result.kind == "run":
            with timings.phase("files"):
                atomic_write_bytes(os.path.join(path, "results.txt"), table.encode())
            _write_run_files(result)
            with timings.phase("tensorboard"):  # The plots, by a writer of their own.
                board = Board(result.tensorboard)
                pngs = sorted(name for name in os.listdir(path) if name.endswith(".png"))
                board.images({name[:-4]: os.path.join(path, name) for name in pngs},
                             result.grid.base.epochs)  # fmt: skip
                board.close()
            _complete(path, result.kind, record, timings)
        else:
            with timings.phase("files"):
                csv_text = rows_to_csv(result.rows, axes=axes).encode()
                atomic_write_bytes(os.path.join(path, f"{result.kind}.csv"), csv_text)
                atomic_write_bytes(os.path.join(path, "summary.txt"), table.encode())
            if result.kind == "sweep" and all(r["auroc"] is not None for r in result.rows):
                from experiments import plots  # noqa: PLC0415  (matplotlib: only for plots)

                labels = _labels(result.grid.base.dataset)
                with timings.phase("plots"):
                    plots.save(plots.auroc_vs_beta(summary, labels),
                               os.path.join(path, "auroc_vs_beta.png"))  # fmt: skip
                    plots.save(plots.best_per_class(summary, labels),
                               os.path.join(path, "best_per_class.png"))  # fmt: skip
            _complete(path, result.kind, record, timings)
        logging.info("results in %s", path)
    return {**record, "output_dir": path}


def _complete(path: str, kind: str, record: dict[str, Any], timings) -> None:
    """Writes the completion file, last, with the command's seconds per phase up to it."""
    record["timings"] = timings.record()
    runs.complete(path, kind, record)


def _write_run_files(result: Result) -> None:
    """scores.npz and the plots of a single run."""
    (normal,) = result.grid.classes
    split, path, timings = result.splits[normal], result.output_dir, result.timings
    labels = split.test_labels
    arrays = {"labels": labels, "classes": split.test_classes}
    for g in result.groups:
        for part, scores in g.scores._asdict().items():
            arrays[f"{g.name}_{part}"] = scores[0, :, 0]
    with timings.phase("files"):
        runs.write_scores(path, arrays)
        for g in result.groups:  # What each model's scores fit: the detector loads it.
            if g.fitted is not None:
                runs.write_fitted_scores(path, runs.model_slug(result.grid.base.dataset, normal,
                                                               g.name), *g.fitted)  # fmt: skip
    with timings.phase("plots"):
        from experiments import plots  # noqa: PLC0415  (matplotlib: only for plots)

        figures = _run_figures(result, arrays)
        for name, figure in figures.items():
            plots.save(figure, os.path.join(path, f"{name}.png"))


def _run_figures(result: Result, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The figures of a single run, by file name (without .png)."""
    from experiments import plots  # noqa: PLC0415
    (normal,) = result.grid.classes
    labels = arrays["labels"]
    rows = {r["model"]: r for r in result.rows}
    test = {g.name: arrays[f"{g.name}_test"] for g in result.groups}
    figures = {} if not labels.size else {  # No test images: no ROC, no histograms of them.
        "roc": plots.roc_curves(labels, test, {n: r["auroc"] for n, r in rows.items()}),
        "score_histograms": plots.score_histograms(
            labels, test, {n: r["threshold"] for n, r in rows.items()}),
    }  # fmt: skip
    p = result.previews
    if p is None:  # Baselines only: nothing to reconstruct.
        return figures
    figures["reconstructions"] = plots.reconstruction_grid(p.inputs, p.reconstructions, p.titles,
                                                           p.image_shape)  # fmt: skip
    figures["training_curves"] = plots.training_curves(
        {n: r["history"] for n, r in rows.items() if "history" in r})
    if p.codes is not None:
        figures["latent"] = plots.latent_scatter(
            p.codes, p.code_classes, normal, p.names,
            "latent means, test images" if labels.size else "latent means, held-out normals")
    return figures


def _labels(dataset: str) -> tuple[str, ...]:
    return tuple(vocab.class_label(dataset, i) for i in range(len(vocab.CLASS_NAMES[dataset])))


def _kinds_table(models: dict[str, dict[str, Any]]) -> str:
    """A folder's test AUROC per kind of anomaly (its test/ subfolders), one line per model."""
    if not any("kinds" in r for r in models.values()):
        return ""
    lines = ["", "AUROC per kind of anomaly (normal test images against each kind):"]
    for name, r in models.items():
        cells = "  ".join(f"{kind} {auroc:.4f}" for kind, auroc in r.get("kinds", {}).items())
        lines.append(f"{name.upper():<8}{cells}")
    return "\n".join(lines) + "\n"


def _threshold_note(models: dict[str, dict[str, Any]], percentile: float) -> str:
    """How firm each model's threshold is: the held-out normals it was set from and the 95%
    interval of the share of normal images it flags (:func:`jax_vae.metrics.fpr_interval`)."""
    firm = {(r["held_out"], r["fpr_low"], r["fpr_high"]) for r in models.values()
            if r.get("held_out") is not None}  # fmt: skip
    if len(firm) != 1:  # Baselines only, or (never in one run) different hold-outs.
        return ""
    ((held_out, low, high),) = firm
    return (f"\nthreshold: the {percentile:g}th percentile of {held_out} held-out normal "
            f"images' scores; it flags {low:.1%} to {high:.1%} of normal images (95% "
            f"interval; nominal {100 - percentile:g}%)\n")


def _health_note(rows: list[dict[str, Any]], classes: tuple[str, ...] | None = None,
                 axes: tuple[str, ...] = ()) -> str:  # fmt: skip
    """Every training-health finding of the rows (:mod:`jax_vae.health`), once each, naming
    the model (in a grid, with ``classes`` given: its axes, class and seed)."""
    lines = []
    for r in rows:
        who = r["model"] if classes is None else \
            f"{_label(r, False, True, axes)}, {classes[r['normal_class']]}, seed {r['seed']}"
        lines += [f"{who}: {text}" for text in r.get("health", ())]
    if not lines:
        return ""
    return "\ntraining health (signs that a model did not train well):\n" + "".join(
        f"  warning: {line}\n" for line in dict.fromkeys(lines))


def _no_test_note(result: Result) -> str:
    """Why a run without test images reports no AUROC, and what it did report."""
    held_out = result.record["splits"][str(result.grid.base.normal_class)]["val"]
    return (f"\nno test images: AUROC, F1 and the rest need normal and anomalous test images "
            f"(test/good/ and test/<kind>/ in the folder); the threshold is the "
            f"{result.grid.base.threshold_percentile:g}th percentile of {held_out} held-out "
            "normal images' scores, and synth AUROC separates them from synthetic "
            "corruptions of themselves\n")


def _run_header(base) -> str:
    """What produced a run's table when a preset did: its name and what it set."""
    if not base.preset:
        return ""
    beta = f", beta {base.beta:g}" if any(registry.reads(m, "beta") for m in base.models
                                         if m not in vocab.BASELINES) else ""  # fmt: skip
    score = f", score {base.score}" if base.score != "residual" or base.score_alternatives \
        else ""  # fmt: skip
    if base.score_alternatives:
        score += f" (or {', '.join(base.score_alternatives)} on images larger than 28x28)"
    return (f"preset {base.preset} on {base.dataset}: {', '.join(base.models)}{beta}, "
            f"{base.epochs} epochs, score smoothing {base.score_smoothing:g}{score}\n\n")


def _score_note(models: dict[str, dict[str, Any]]) -> str:
    """Each model's score where it was chosen after training (``--score_alternatives``)."""
    chosen = {n: r["score_choice"] for n, r in models.items() if "score_choice" in r}
    if not chosen:
        return ""
    lines = ["", "score of each model, chosen from the held-out normals and their synthetic "
                 "corruptions:"]  # fmt: skip
    lines += [f"{n.upper():<8}{c['score']}: {c['why']}" for n, c in chosen.items()]
    return "\n".join(lines) + "\n"


def format_table(model_results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side results table, one row per model."""
    # Each column: its title or a 7-character number, plus two spaces.
    widths = [max(len(title), 7) + 2 for title, _, _ in TABLE_COLUMNS]
    header = f"{'model':<8}" + "".join(
        f"{title:>{w}}" for (title, _, _), w in zip(TABLE_COLUMNS, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for name, r in model_results.items():
        cells = "".join(
            f"{r[key]:>{w}{fmt}}" if r.get(key) is not None else f"{'-':>{w}}"
            for (_, key, fmt), w in zip(TABLE_COLUMNS, widths, strict=True)
        )
        lines.append(f"{name.upper():<8}{cells}")
    return "\n".join(lines) + "\n"


def _label(row: dict[str, Any], smoothed: bool, rated: bool = False,
           axes: tuple[str, ...] = ()) -> str:
    label = row["model"].upper()
    if row.get("beta") is not None:
        label += f" b={row['beta']:g}"
    if rated and row.get("learning_rate") is not None:
        label += f" lr={row['learning_rate']:g}"
    label += "".join(f" {a}={row[a]:g}" for a in axes if row.get(a) is not None)
    if smoothed and row.get("smoothing") is not None:
        label += f" s={row['smoothing']:g}"
    if row.get("score") not in (None, "residual"):
        label += f" {row['score']}"
    return label


def summarize(rows: list[dict[str, Any]], *, metric: str = "auroc",
              axes: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Mean and std over seeds per configuration and class, plus the mean over classes.

    The std of the class mean is over seeds of each seed's mean over classes.

    Args:
      rows: The grid's rows.
      metric: The row field to summarize.
      axes: The models' own hyperparameter axes (``SweepConfig.hparams``): a configuration
        is also one value of each.

    Returns:
      ``{label: {"classes": {d: (mean, std)}, "mean": (mean, std), "model", "beta",
      "learning_rate", "smoothing", "score", "hparams"}}`` with labels: the upper-case
      model name (``AE``, ``PCA``, ...), `` b=<beta>`` for models with a beta, ``
      lr=<learning rate>`` when the rows have several, `` <axis>=<value>`` for each of
      ``axes`` the model reads, `` s=<smoothing>`` when any row is scored with a smoothed
      residual.
    """
    smoothed = any(r.get("smoothing") for r in rows)
    rated = len({r.get("learning_rate") for r in rows} - {None}) > 1
    configs: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = configs.setdefault(_label(r, smoothed, rated, axes), {
            "model": r["model"], "beta": r["beta"], "learning_rate": r.get("learning_rate"),
            "smoothing": r.get("smoothing"), "score": r.get("score"),
            **({"hparams": {a: r[a] for a in axes if r.get(a) is not None}} if axes else {}),
            "values": {}})  # fmt: skip
        entry["values"].setdefault(r["normal_class"], {})[r["seed"]] = r[metric]
    summary = {}
    for label, entry in configs.items():
        values = entry.pop("values")
        classes = sorted(values)
        if any(v is None for d in classes for v in values[d].values()):  # No test images.
            summary[label] = {**entry, "classes": {d: (None, None) for d in classes},
                              "mean": (None, None)}  # fmt: skip
            continue
        seeds = sorted(set.intersection(*(set(values[d]) for d in classes)))
        seed_means = [np.mean([values[d][s] for d in classes]) for s in seeds]
        summary[label] = {
            **entry,
            "classes": {d: (float(np.mean(list(values[d].values()))),
                           float(np.std(list(values[d].values())))) for d in classes},
            "mean": (float(np.mean(seed_means)), float(np.std(seed_means))),
        }  # fmt: skip
    return summary


def format_summary(
    summary: dict[str, dict[str, Any]], *, metric: str = "AUROC",
    names: tuple[str, ...] | None = None,
) -> str:
    """The summary as a table: one row per configuration, one column per class, headed by
    its label (``names``; default MNIST's ``digit 0`` ...)."""
    names = names or _labels("mnist")
    classes = sorted({d for s in summary.values() for d in s["classes"]})
    title = f"{metric} mean+-std"
    width = max(len(title), *(len(label) for label in summary)) + 1
    header = f"{title:<{width}}" + "".join(f"{names[d]:>16}" for d in classes) + f"{'mean':>16}"
    lines = [header, "-" * len(header)]
    for label, s in summary.items():
        cells = "".join(f"{_pm(*s['classes'][d]):>16}" for d in classes)
        lines.append(f"{label:<{width}}{cells}{_pm(*s['mean']):>16}")
    return "\n".join(lines) + "\n"


def best(summary: dict[str, dict[str, Any]]) -> str:
    """The configuration with the highest mean over classes (the first of a tie)."""
    return max(summary, key=lambda label: -np.inf if summary[label]["mean"][0] is None
               else summary[label]["mean"][0])  # fmt: skip


def _tables(rows: list[dict[str, Any]], summary: dict, *, select: bool, names,
            axes: tuple[str, ...] = ()) -> str:  # fmt: skip
    """The test AUROC table, the synthetic-anomaly AUROC (normal data only) table and,
    with ``select``, the configuration that the synthetic AUROC selects."""
    synthetic_summary = summarize(rows, metric="synthetic_auroc", axes=axes)
    text = (f"{format_summary(summary, names=names)}\n"
            f"{format_summary(synthetic_summary, metric='synth AUROC', names=names)}")
    if not select:
        return text
    chosen, test = best(synthetic_summary), summary[best(synthetic_summary)]["mean"][0]
    return (
        f"{text}\nselected by synthetic AUROC (normal data only): {chosen} "
        f"(synth AUROC {synthetic_summary[chosen]['mean'][0]:.4f}"
        + ("" if test is None else f", test AUROC {test:.4f}") + ")\n"
    )


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.4f}+-{std:.4f}"


def rows_to_csv(rows: list[dict[str, Any]], *, axes: tuple[str, ...] = ()) -> str:
    """One CSV line per model, beta, learning rate, value of each of the models' own
    ``axes`` (a column each, after the learning rate), seed, class and smoothing (empty
    where none)."""
    at = CSV_FIELDS.index("learning_rate") + 1
    fields = (*CSV_FIELDS[:at], *axes, *CSV_FIELDS[at:])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else
                             "; ".join(r[k]) if k == "health" else r[k]) for k in fields})
    return buffer.getvalue()
