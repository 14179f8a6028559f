"""The results tables of README.md and docs/, computed from the files under experiments/results.

Each table in a Markdown file sits between ``<!-- table NAME -->`` and ``<!-- /table -->``;
this script recomputes every such table from the results files it names, so a number in the
docs cannot drift from its file::

    python scripts/tables.py           # rewrites the tables in README.md and docs/*.md
    python scripts/tables.py --check   # exit 1, naming each table that differs

``tests/test_docs.py`` runs the check. A number comes from the rows of a sweep's
``sweep.json`` (or ``baselines.json``), a mean over seeds per class, the mean over classes
with its std over the seeds' class means (as ``experiments.report.summarize``), or from a
run's ``metrics.json``.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from experiments.report import summarize  # noqa: E402
from jax_vae import vocab  # noqa: E402

RESULTS = os.path.join(ROOT, "experiments", "results")
FILES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- table (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)
BLOCK_NAMES = re.compile(r"<!-- table (\S+) -->")
MNIST_SELECTION = ("selection_e30", "selection_e60")
FMNIST_SELECTION = ("fmnist_selection_e30", "fmnist_selection_e60")


@functools.cache
def _rows(folder: str) -> tuple[dict, ...]:
    """A sweep's or baselines run's rows, each with its epochs, ``normal_class`` (older files
    say ``digit``), ``score`` (``residual`` where absent) and ``smoothing``."""
    path = os.path.join(RESULTS, folder)
    (name,) = [f for f in ("sweep.json", "baselines.json") if os.path.exists(f"{path}/{f}")]
    with open(f"{path}/{name}") as f:
        record = json.load(f)
    epochs = record["config"].get("epochs")
    return tuple({**r, "normal_class": r.get("normal_class", r.get("digit")),
                  "score": r.get("score") or "residual", "epochs": epochs}
                 for r in record["rows"])  # fmt: skip


def stats(folders, metric="auroc", **match) -> dict:
    """One candidate's summary (``experiments.report.summarize``) over the rows of
    ``folders`` matching every ``match`` (``model``, ``beta``, ``smoothing``, ``score``,
    ``epochs``)."""
    folders = (folders,) if isinstance(folders, str) else folders
    rows = [r for f in folders for r in _rows(f)
            if all(r.get(k) == v for k, v in match.items())]  # fmt: skip
    summary = summarize(rows, metric=metric)
    if len(summary) != 1:
        raise ValueError(f"{folders} {match}: {len(summary)} candidates match, want 1")
    return next(iter(summary.values()))


def num(value: float, digits: int = 4) -> str:
    """``.9652``: a metric in [0, 1] without its leading zero."""
    return f"{value:.{digits}f}".removeprefix("0")


def pm(mean_std) -> str:
    mean, std = mean_std
    return f"{num(mean)} +- {num(std)}"


def _classes(dataset: str) -> list[str]:
    names = vocab.CLASS_NAMES[dataset]
    return [str(i) for i in range(len(names))] if dataset == "mnist" else list(names)


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in rows)])  # fmt: skip


def per_class(dataset: str, rows: list[tuple[str, dict | str]]) -> str:
    """A per-class AUROC table: (label, summary) rows, or (label, text) for a row of text
    cells (published numbers: ``"<class 0 cell>|...|<mean>"``)."""
    classes = _classes(dataset)
    body = []
    for label, s in rows:
        if isinstance(s, str):
            body.append([label, *s.split("|")])
            continue
        cells = [num(s["classes"][c][0]) for c in range(len(classes))]
        mean = pm(s["mean"]) if any(v[1] for v in s["classes"].values()) or s["mean"][1] \
            else num(s["mean"][0])  # fmt: skip
        body.append([label, *cells, mean])
    return table(["model", *classes, "mean"], body)


def _run(folder: str) -> dict:
    """A single run's ``metrics.json`` (its ``config`` and ``models``)."""
    with open(os.path.join(RESULTS, folder, "metrics.json")) as f:
        return json.load(f)


def run_table(folder: str, labels: dict[str, str]) -> str:
    models = _run(folder)["models"]
    body = [[label, *(num(models[m][k]) for k in ("auroc", "auprc", "f1", "precision", "recall")),
             num(models[m]["fpr"], 3), f"{models[m]['train_seconds']:.1f}"]
            for m, label in labels.items()]  # fmt: skip
    return table(["model", "AUROC", "AUPRC", "F1", "precision", "recall", "FPR", "train s"], body)


# The candidates the tables name.
def ae(folders, **kw):
    return stats(folders, model="ae", **kw)


def vae(folders, beta, **kw):
    return stats(folders, model="vae", beta=beta, **kw)


def base(folder, name):
    return stats(folder, model=name)


def _mnist() -> str:
    s30, s60 = "selection_e30", "selection_e60"
    published = "|".join
    return per_class("mnist", [
        ("AE (seed spec: 30 epochs, MSE score)", ae(s30, smoothing=0.0)),
        ("beta-VAE, beta 1 (seed spec)", vae(s30, 1.0, smoothing=0.0)),
        ("beta-VAE, beta 2 (seed spec)", vae(s30, 2.0, smoothing=0.0)),
        ("beta-VAE, beta 0.5", vae(s30, 0.5, smoothing=0.0)),
        ("AE, 60 epochs, smoothing 1 (the first family's transfer pick)",
         ae(s60, smoothing=1.0)),
        ("synthetic-AUROC rule (beta-VAE, beta 0.5, 60 epochs, smoothing 2)",
         vae(s60, 0.5, smoothing=2.0)),
        ("*chosen on test labels, an upper bound:* beta-VAE, beta 1, 60 epochs, smoothing 1",
         vae(s60, 1.0, smoothing=1.0)),
        ("PCA, 20 components (reconstruction)", base("baselines_all_digits", "pca")),
        ("kNN, k = 5 (mean distance)", base("baselines_all_digits", "knn")),
        ("OC-SVM, RBF, nu 0.1", base("baselines_all_digits", "ocsvm")),
        ("IsolationForest, 100 trees", base("baselines_all_digits", "iforest")),
        ("Deep SVDD (Ruff et al., ICML 2018)", published([".980", *[""] * 9, ".948"])),
        ("OCGAN (Perera et al., CVPR 2019)", published([".998", *[""] * 9, ".975"])),
        ("LSA (Abati et al., CVPR 2019)", published([*[""] * 10, ".975"])),
    ])  # fmt: skip


def _fmnist() -> str:
    s30, s60, b = "fmnist_selection_e30", "fmnist_selection_e60", "fmnist_baselines"
    return per_class("fashion_mnist", [
        ("AE (seed spec: 30 epochs, MSE score)", ae(s30, smoothing=0.0)),
        ("beta-VAE, beta 1 (seed spec)", vae(s30, 1.0, smoothing=0.0)),
        ("beta-VAE, beta 2 (seed spec)", vae(s30, 2.0, smoothing=0.0)),
        ("beta-VAE, beta 0.5", vae(s30, 0.5, smoothing=0.0)),
        ("**transfer from MNIST: the first family's headline** (beta-VAE, beta 1, 60 epochs, "
         "smoothing 1)", vae(s60, 1.0, smoothing=1.0)),
        ("synthetic-AUROC rule (AE, 60 epochs, smoothing 1.5)", ae(s60, smoothing=1.5)),
        ("*chosen on test labels, an upper bound:* AE, 60 epochs, smoothing 1",
         ae(s60, smoothing=1.0)),
        ("PCA, 20 components (reconstruction)", base(b, "pca")),
        ("kNN, k = 5 (mean distance)", base(b, "knn")),
        ("OC-SVM, RBF, nu 0.1", base(b, "ocsvm")),
        ("IsolationForest, 100 trees", base(b, "iforest")),
    ])  # fmt: skip


def _f1(dataset: str) -> str:
    rows = ([("AE (seed spec)", "af0.1_e30", dict(model="ae", smoothing=0.0)),
             ("beta-VAE, beta 1 (seed spec)", "af0.1_e30", dict(model="vae", beta=1.0)),
             ("beta-VAE, beta 2 (seed spec)", "af0.1_e30", dict(model="vae", beta=2.0)),
             ("AE, 60 epochs, smoothing 1 (the first family's transfer pick)",
              "af0.1_preset_transfer", dict(model="ae")),
             ("synthetic-AUROC rule (beta-VAE, beta 0.5, 60 epochs, smoothing 2)",
              "af0.1_preset", dict(model="vae"))]
            if dataset == "mnist" else
            [("AE (seed spec)", "fmnist_af0.1_e30", dict(model="ae")),
             ("beta-VAE, beta 1 (seed spec)", "fmnist_af0.1_e30", dict(model="vae", beta=1.0)),
             ("beta-VAE, beta 2 (seed spec)", "fmnist_af0.1_e30", dict(model="vae", beta=2.0)),
             ("beta-VAE, beta 1, 60 epochs, smoothing 1 (the first family's transfer pick)",
              "fmnist_af0.1_preset", dict(model="vae"))])  # fmt: skip
    first = vocab.class_label(dataset, 0)
    body = []
    for label, folder, match in rows:
        cells = [pm(stats(folder, metric, **match)["mean"])
                 for metric in ("auroc", "f1", "precision", "recall")]  # fmt: skip
        body.append([label, *cells, num(stats(folder, "f1", **match)["classes"][0][0])])
    return table(["model", "AUROC", "F1", "precision", "recall", f"F1, {first}"], body)


def _smoothing() -> str:
    levels = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    rows = []
    for label, match in (("beta-VAE, beta 0.5, 60 epochs", dict(folders="selection_e60",
                                                                model="vae", beta=0.5)),
                         ("AE, 30 epochs", dict(folders="selection_e30", model="ae"))):
        for metric, what in (("synthetic_auroc", "synthetic AUROC"), ("auroc", "test AUROC")):
            rows.append([f"{label}: {what}", *(num(stats(metric=metric, smoothing=s, **match)
                                                    ["mean"][0]) for s in levels)])
    return table(["smoothing (pixels)", *(f"{s:g}" for s in levels)], rows)


def _fusion(dataset: str) -> str:
    folder = "fusion_e60" if dataset == "mnist" else "fmnist_fusion_e60"
    names = ("shift", "latent_knn", "pixel_knn", "shift_latent_knn", "shift_pixel_knn")
    marks = ({("ae", "shift_latent_knn"): "**{}: the transfer pick, MNIST's headline**",
              ("vae", "shift"): "*{}: the oracle, an upper bound*"} if dataset == "mnist" else
             {("ae", "shift_latent_knn"): "*{}: the oracle, an upper bound*",
              ("vae", "shift"): "**{}: the transfer pick, Fashion-MNIST's headline**"})
    rows = []
    for model in ("ae", "vae"):
        for score in names:
            label = f"{'AE' if model == 'ae' else 'VAE beta 1'}, {score}"
            rows.append((marks.get((model, score), "{}").format(label),
                         stats(folder, model=model, score=score)))  # fmt: skip
    text = per_class(dataset, rows)
    return text.replace("| model |", "| candidate (60 epochs, smoothing 1) |", 1)


def _headline(dataset: str) -> dict:
    """Each dataset's headline, the transfer pick: the other dataset's best candidate."""
    if dataset == "mnist":
        return stats("fusion_e60", model="ae", score="shift_latent_knn")
    return stats("fmnist_fusion_e60", model="vae", score="shift")


def _first_rules() -> str:
    m60, f60 = "selection_e60", "fmnist_selection_e60"
    d0 = num(ae(m60, smoothing=1.0)["classes"][0][0])
    return table(["rule", "MNIST", "Fashion-MNIST"], [
        ["**transfer** (the other dataset's best)",
         f"**{pm(ae(m60, smoothing=1.0)['mean'])}** (AE, 60 ep., s 1; digit 0 {d0})",
         f"**{pm(vae(f60, 1.0, smoothing=1.0)['mean'])}** (VAE beta 1, 60 ep., s 1)"],
        ["synthetic AUROC (normal data only)",
         f"{pm(vae(m60, 0.5, smoothing=2.0)['mean'])} (VAE beta 0.5, 60 ep., s 2)",
         f"{pm(ae(f60, smoothing=1.5)['mean'])} (AE, 60 ep., s 1.5)"],
        ["*oracle: own test labels, an upper bound*",
         f"{pm(vae(m60, 1.0, smoothing=1.0)['mean'])} (VAE beta 1, 60 ep., s 1)",
         f"{pm(ae(f60, smoothing=1.0)['mean'])} (AE, 60 ep., s 1)"],
    ])  # fmt: skip


def _pool_rules() -> str:
    m, f = _headline("mnist"), _headline("fashion_mnist")
    joint_m = vae("selection_e60", 1.0, smoothing=1.0)["mean"][0]
    joint_f = vae("fmnist_selection_e60", 1.0, smoothing=1.0)["mean"][0]
    return table(["rule", "MNIST", "Fashion-MNIST"], [
        ["**transfer** (the headline; the other dataset's best)",
         f"**{pm(m['mean'])}** (AE, shift_latent_knn; digit 0 {num(m['classes'][0][0])})",
         f"**{pm(f['mean'])}** (VAE beta 1, shift)"],
        ["the first family's transfer pick",
         pm(ae("selection_e60", smoothing=1.0)["mean"]),
         pm(vae("fmnist_selection_e60", 1.0, smoothing=1.0)["mean"])],
        ["*oracle: own test labels, an upper bound*",
         f"{pm(vae('fusion_e60', 1.0, score='shift')['mean'])} (VAE beta 1, shift)",
         f"{pm(ae('fmnist_fusion_e60', score='shift_latent_knn')['mean'])} "
         "(AE, shift_latent_knn)"],
        ["joint (best mean over both; chosen on both test sets)",
         f"{num(joint_m)} (VAE beta 1, 60 ep., s 1)", f"{num(joint_f)} (the same)"],
    ])  # fmt: skip


def _pick_words(dataset: str, decision: int = 1) -> str:
    """A decision's picks in words: one candidate, or how many classes each took."""
    result = _decisions(dataset)[decision]
    counts: dict[str, int] = {}
    for c, i in sorted(result["picks"].items()):
        cand = result["pools"][c][i]
        words = f"{cand['model'].upper()}{' beta 1' if cand['beta'] else ''}, {cand['score']}"
        counts[words] = counts.get(words, 0) + 1
    if len(counts) == 1:
        return f"{next(iter(counts))}, every class"
    return "; ".join(f"{w} x{n}" for w, n in counts.items())


def _readme() -> str:
    from experiments.config import GEOM_CANDIDATES, WITHIN_CANDIDATES  # noqa: PLC0415

    m30, f30 = "selection_e30", "fmnist_selection_e30"
    m, f = _headline("mnist"), _headline("fashion_mnist")
    wm, wf = _within_headline("mnist", 1), _within_headline("fashion_mnist", 1)
    bases = (("PCA", "pca"), ("kNN", "knn"), ("OC-SVM", "ocsvm"), ("IsolationForest", "iforest"))
    best_m = max(bases, key=lambda b: base("baselines_all_digits", b[1])["mean"][0])
    best_f = max(bases, key=lambda b: base("fmnist_baselines", b[1])["mean"][0])
    pool = {d: max([stats(WITHIN[d], model=c["model"], score=c["score"])["mean"][0]
                    for c in WITHIN_CANDIDATES] + [stats(GEOM[d], model=c["model"],
                                                         score=c["score"])["mean"][0]
                                                   for c in GEOM_CANDIDATES])
            for d in WITHIN}  # fmt: skip
    oracle_m = max(pool["mnist"], vae("fusion_e60", 1.0, score="shift")["mean"][0])
    oracle_f = max(pool["fashion_mnist"],
                   ae("fmnist_fusion_e60", score="shift_latent_knn")["mean"][0])
    return table(["", "MNIST", "Fashion-MNIST"], [
        ["AE (seed spec: 30 epochs, MSE score)", num(ae(m30, smoothing=0.0)["mean"][0]),
         num(ae(f30, smoothing=0.0)["mean"][0])],
        ["beta-VAE, beta 1 (seed spec)", num(vae(m30, 1.0, smoothing=0.0)["mean"][0]),
         num(vae(f30, 1.0, smoothing=0.0)["mean"][0])],
        ["**headline, preset `best`: chosen within the dataset, from its training split**",
         f"**{num(wm['mean'][0])}** ({_pick_words('mnist')}; 60 ep., s 1)",
         f"**{num(wf['mean'][0])}** ({_pick_words('fashion_mnist')}; 60 ep., s 1)"],
        ["chosen across datasets: the other dataset's best candidate",
         f"{num(m['mean'][0])} (AE, shift + latent k-NN)",
         f"{num(f['mean'][0])} (VAE beta 1, shift)"],
        ["best scikit-learn baseline",
         f"{num(base('baselines_all_digits', best_m[1])['mean'][0])} ({best_m[0]})",
         f"{num(base('fmnist_baselines', best_f[1])['mean'][0])} ({best_f[0]})"],
        ["*chosen on the dataset's own test labels: an upper bound, not a result*",
         num(oracle_m), num(oracle_f)],
        ["published, as reported",
         "Deep SVDD .948, OCGAN .975, LSA .975; GEOM .980, ARNet .983, ESAD .985",
         "GEOM .935, ARNet .939, ESAD .940"],
    ])  # fmt: skip


def _folder() -> str:
    """The Sandal class read from PNG files and from the IDX files: the same numbers."""
    rows = []
    for label, folder in (("`--dataset=folder`", "sandal_folder"),
                          ("`--dataset=fashion_mnist`", "sandal_idx")):
        record = _run(folder)
        m, (split,) = record["models"], record["config"]["splits"].values()
        rows.append([label, *(num(m[name][metric]) for metric in ("auroc", "f1")
                              for name in ("ae", "vae")), f"`{split['fingerprint']}`"])
    return table(["", "AE AUROC", "VAE AUROC", "AE F1", "VAE F1", "split fingerprint"], rows)


def _kinds() -> str:
    models = _run("sandal_folder")["models"]
    kinds = list(models["ae"]["kinds"])
    return table(["model", *kinds], [[name.upper(), *(num(models[name]["kinds"][k], 3)
                                                      for k in kinds)] for name in ("ae", "vae")])


def _extensions() -> str:
    s30, s60 = "selection_e30", "selection_e60"
    rows = [
        ("seed spec: beta 1, 30 epochs", vae(s30, 1.0, smoothing=0.0)),
        ("beta 0.5", vae(s30, 0.5, smoothing=0.0)),
        ("`--epochs=60`, beta 0.5", vae(s60, 0.5, smoothing=0.0)),
        ("`--score_smoothing=1`, beta 1", vae(s30, 1.0, smoothing=1.0)),
        ("`--score_smoothing=1`, the AE", ae(s30, smoothing=1.0)),
        ("`--score_smoothing=1 --epochs=60`, beta 1", vae(s60, 1.0, smoothing=1.0)),
    ]
    return table(["variant", "mean AUROC", "digit 0"],
                 [[label, pm(x["mean"]), num(x["classes"][0][0])] for label, x in rows])


def _time_to_result() -> str:
    with open(os.path.join(RESULTS, "time_to_result", "after_cpu.json")) as f:
        runs = json.load(f)["runs"]
    cold, warm = runs["cold"], runs["warm"]
    phases = [("start-up (interpreter, flags)", ("startup",)),
              ("backend (import JAX, find devices)", ("backend",)),
              ("imports (pipeline, report)", ("imports",)),
              ("data (read, gunzip, MD5, split)", ("data",)),
              ("compile (init and epoch, both models)", ("compile",)),
              ("**train** (both models)", ("train",)),
              ("checkpoints (7 saves per model)", ("checkpoints",)),
              ("scoring", ("scoring",)),
              ("metrics (with the scikit-learn import)", ("metrics",)),
              ("plots (with the matplotlib import)", ("plots",)),
              ("files and TensorBoard", ("files", "tensorboard")),
              ("other (per-epoch hooks, logging)", ("other",)),
              ("exit (process teardown)", ("exit",))]  # fmt: skip
    rows = [[label, *(f"{sum(r['phases'][k] for k in keys):.2f}" for r in (cold, warm))]
            for label, keys in phases]  # fmt: skip
    rows += [["**wall**", *(f"{r['wall_seconds']:.2f}" for r in (cold, warm))],
             ["**wall / training**", *(f"{r['ratio']:.2f}" for r in (cold, warm))],
             ["peak RSS (MB)", *(f"{r['peak_rss_mb']:.0f}" for r in (cold, warm))]]
    return table(["seconds", "cold cache", "warm cache"], rows)


def _threshold_folds() -> str:
    with open(os.path.join(RESULTS, "threshold_folds", "figures.json")) as f:
        record = json.load(f)
    rows = [[label, str(n), f"{record['summary'][k]['mean']:.1%} +- "
             f"{record['summary'][k]['std']:.1%}"]
            for label, k, n in (("held out (`val_fraction=0.1`)", "held_out",
                                 record["normals"] // 10),
                                (f"cross-fitted (`threshold_folds={record['folds']}`)",
                                 "cross_fitted", record["normals"]))]  # fmt: skip
    return table(["threshold", "normals that set it", "share of other normals flagged"], rows)


def _large_images() -> str:
    rows = []
    for label, name in (("sliced batches (the default: 32 slices of 4 images)",
                         "large_images"), ("whole batches (`microbatches=1`)", "whole_batches")):
        with open(os.path.join(RESULTS, "large_images", f"{name}.json")) as f:
            record = json.load(f)
        j, t = record["jax"], record["torch"]
        ratios = record.get("ratios", [j["seconds_per_epoch"] / t["seconds_per_epoch"]])
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        rows.append([f"JAX, {label}", f"{j['images_per_second']:.0f}",
                     f"{j['seconds_per_epoch']:.2f}", f"{j['peak_rss_mb']:.0f}",
                     f"{np.median(ratios):.2f}{spread}"])
        runs = f"median of {len(ratios)} runs" if len(ratios) > 1 else "same run"
        rows.append([f"PyTorch 2.13 ({runs})", f"{t['images_per_second']:.0f}",
                     f"{t['seconds_per_epoch']:.2f}", f"{t['peak_rss_mb']:.0f}", "1"])
    return table(["conv AE, 128x128 RGB, 270 images", "images/s", "s/epoch", "peak RSS (MB)",
                  "/ PyTorch s/epoch"], rows)


def _small_data() -> str:
    with open(os.path.join(RESULTS, "small_data", "results.json")) as f:
        record = json.load(f)
    photos = ("the temple", "the flower")  # scikit-learn's sample images, 0 and 1.
    rows = []
    for t in record["tasks"]:
        plain, best = t["plain AE"]["auroc"], t["preset best"]
        vae = t["VAE beta 1, 60 epochs, smoothing 1"]["models"]["vae"]
        if t["dataset"] == "photos":
            task = f"RGB crops of {photos[t['normal_class']]}"
        else:
            name = "MNIST" if t["dataset"] == "mnist" else "Fashion-MNIST"
            task = f"{name} {vocab.class_label(t['dataset'], t['normal_class'])}"
        rows.append([f"{task}, {t['side']}x{t['side']}", num(plain),
                     f"{num(best['auroc'])} ({best['model'].upper()})",
                     f"{round(best['auroc'] - plain, 4) + 0.0:+.4f}",
                     num(t["AE, 60 epochs"]["auroc"]),
                     num(vae["auroc"]) + (" (warned)" if vae["health"] else "")])
    return table(["task (300 training images)", "plain AE", "`--preset=best` (its pick)",
                  "difference", "AE, 60 ep.", "VAE beta 1, 60 ep., s 1"], rows)


def _large_data() -> str:
    with open(os.path.join(RESULTS, "large_data", "results.json")) as f:
        record = json.load(f)
    photos = ("the temple", "the flower")
    what = {"digits": "MNIST digit {n} upscaled", "photos": "crops of {p} against the other",
            "scratches": "crops of {p}, scratched"}  # fmt: skip
    rows = []
    for t in record["tasks"]:
        plain, best = t["plain AE"]["auroc"], t["preset best"]
        rule = t["preset best, map alternatives"]
        choice = rule["models"][rule["model"]]["score_choice"]["score"]
        task = what[t["dataset"]].format(n=t["normal_class"], p=photos[t["normal_class"] % 2])
        rows.append([f"{task}, {t['side']}x{t['side']}", num(plain),
                     f"{num(best['auroc'])} ({best['model'].upper()})",
                     f"{num(rule['auroc'])} ({rule['model'].upper()}, {choice})",
                     f"{round(rule['auroc'] - plain, 4) + 0.0:+.4f}",
                     num(t["AE residual_top"]["auroc"]), num(t["AE residual_max"]["auroc"])])
    return table(["task (300 training images)", "plain AE", "`--preset=best` (its pick)",
                  "with map alternatives (its pick)", "its difference", "AE, residual_top",
                  "AE, residual_max"], rows)


WITHIN = {"mnist": "within_e60", "fashion_mnist": "fmnist_within_e60"}
SHORT = {"residual": "res.", "shift": "shift", "shift_latent_knn": "shift+kNN", "rapp": "RaPP",
         "geom": "GEOM", "residual_geom": "res.+GEOM"}


GEOM = {"mnist": "geom_e60", "fashion_mnist": "fmnist_geom_e60"}


@functools.cache
def _decisions(dataset: str) -> tuple[dict, dict]:
    """The leave-classes-out rule's result on a dataset's within grid, and the second
    decision's over the transform-classifier family (its grid beside it)."""
    from experiments import select  # noqa: PLC0415

    return select.decisions(select.load_rows([os.path.join(RESULTS, WITHIN[dataset]),
                                              os.path.join(RESULTS, GEOM[dataset])]))


def _within(dataset: str) -> dict:
    """The first decision's result."""
    return _decisions(dataset)[0]


def _summary(per_class: dict) -> dict:
    """A :func:`per_class` row's summary from {class: [value per seed]}."""
    from experiments import select  # noqa: PLC0415

    return {"classes": {c: (float(np.mean(v)), float(np.std(v))) for c, v in per_class.items()},
            "mean": select.class_means(per_class)}


def _geom_table(dataset: str) -> str:
    from experiments.config import GEOM_CANDIDATES  # noqa: PLC0415

    result = _decisions(dataset)[1]
    pools = [result["pools"][c] for c in sorted(result["pools"])]
    rows = [("**the second decision's pick: the headline**", _summary(result["headline"])),
            ("its pick", "|".join(f"{p[i]['model'].upper()} {SHORT[p[i]['score']]}"
                                  for p, i in zip(pools, (result["picks"][c] for c in
                                                          sorted(result["picks"])), strict=True))
             + "|")]  # fmt: skip
    candidates = [("the first decision's pick", 0)] + [
        (f"{c['model'].upper()}, {c['score']}", i + 1) for i, c in enumerate(GEOM_CANDIDATES)]
    summaries = [_summary({c: result["test"][c][i] for c in result["test"]})
                 for _, i in candidates]  # fmt: skip
    oracle = max(range(len(summaries)), key=lambda i: summaries[i]["mean"][0])
    for j, ((label, _), summary) in enumerate(zip(candidates, summaries, strict=True)):
        rows.append((f"*{label}: the best by test AUROC, an upper bound*" if j == oracle
                     else label, summary))  # fmt: skip
    rows.append(("VAE, geom (not in the pool)", stats(GEOM[dataset], model="vae", score="geom")))
    text = per_class(dataset, rows)
    return text.replace("| model |", "| candidate (60 epochs, smoothing 1) |", 1)


def _within_headline(dataset: str, decision: int = 0) -> dict:
    """A decision's headline as a summary (0: the first, 1: the second, the final one)."""
    return _summary(_decisions(dataset)[decision]["headline"])


def _within_table(dataset: str) -> str:
    from experiments.config import WITHIN_CANDIDATES  # noqa: PLC0415

    folder, result = WITHIN[dataset], _within(dataset)
    picks = [WITHIN_CANDIDATES[i] for _, i in sorted(result["picks"].items())]
    rows = [("**the first decision's pick**", _within_headline(dataset)),
            ("its pick", "|".join(f"{c['model'].upper()} {SHORT[c['score']]}" for c in picks)
             + "|")]
    summaries = [stats(folder, model=c["model"], score=c["score"]) for c in WITHIN_CANDIDATES]
    oracle = max(range(len(summaries)), key=lambda i: summaries[i]["mean"][0])
    for i, (c, summary) in enumerate(zip(WITHIN_CANDIDATES, summaries, strict=True)):
        label = f"{c['model'].upper()}, {c['score']}"
        rows.append((f"*{label}: the best by test AUROC, an upper bound*" if i == oracle
                     else label, summary))  # fmt: skip
    for model in ("ae", "vae"):
        for score in ("rapp_sap", "residual_max", "residual_top"):
            rows.append((f"{model.upper()}, {score} (not in the pool)",
                         stats(folder, model=model, score=score)))  # fmt: skip
    text = per_class(dataset, rows)
    return text.replace("| model |", "| candidate (60 epochs, smoothing 1) |", 1)


TABLES: dict[str, Callable[[], str]] = {
    "within_mnist": lambda: _within_table("mnist"),
    "within_fashion_mnist": lambda: _within_table("fashion_mnist"),
    "geom_mnist": lambda: _geom_table("mnist"),
    "geom_fashion_mnist": lambda: _geom_table("fashion_mnist"),
    "small_data": _small_data,
    "large_data": _large_data,
    "large_images": _large_images,
    "threshold_folds": _threshold_folds,
    "time_to_result": _time_to_result,
    "extensions": _extensions,
    "folder_vs_idx": _folder,
    "folder_kinds": _kinds,
    "digit0_beta2": lambda: run_table("digit0_beta2", {"ae": "AE",
                                                       "vae": "beta-VAE (beta 2)"}),
    "readme_summary": _readme,
    "mnist": _mnist,
    "mnist_f1": lambda: _f1("mnist"),
    "smoothing": _smoothing,
    "fashion_mnist": _fmnist,
    "first_rules": _first_rules,
    "fashion_mnist_f1": lambda: _f1("fashion_mnist"),
    "fusion_mnist": lambda: _fusion("mnist"),
    "fusion_fashion_mnist": lambda: _fusion("fashion_mnist"),
    "pool_rules": _pool_rules,
}


def render(text: str, where: str = "") -> str:
    """``text`` with every table block recomputed."""

    def block(match):
        name = match.group(2)
        if name not in TABLES:
            raise KeyError(f"{where}: no table {name!r} (known: {', '.join(TABLES)})")
        return f"{match.group(1)}{TABLES[name]()}\n{match.group(4)}"

    return BLOCK.sub(block, text)


def paths() -> list[str]:
    return sorted(p for pattern in FILES for p in glob.glob(os.path.join(ROOT, pattern)))


def main(argv: list[str]) -> int:
    check, stale = "--check" in argv, []
    for path in paths():
        with open(path) as f:
            text = f.read()
        new = render(text, os.path.relpath(path, ROOT))
        if new != text:
            stale.append(os.path.relpath(path, ROOT))
            if not check:
                with open(path, "w") as f:
                    f.write(new)
    if check and stale:
        print(f"tables differ from experiments/results in: {', '.join(stale)}; run "
              "python scripts/tables.py", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
