"""PNG plots of a run. Each function returns a matplotlib Figure; :func:`save` writes it."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # Headless: runs on clusters and CI without a display.

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from jax_vae.runs import atomic_write_bytes  # noqa: E402


def save(fig: Figure, path: str) -> None:
    """Writes a figure as PNG atomically and closes it.

    The figures lay themselves out (``layout="constrained"``), so one draw
    renders them; ``bbox_inches="tight"`` would draw each twice.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def roc_curves(
    labels: np.ndarray, scores: dict[str, np.ndarray], aurocs: dict[str, float]
) -> Figure:
    """ROC curves of every model on one axis."""
    # scikit-learn (about 1.5 s to import) only here: the score command's maps do without.
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, label=f"{name.upper()} (AUROC {aurocs[name]:.4f})")
    chance = np.geomspace(1e-3, 1, 50)
    ax.plot(chance, chance, color="grey", linestyle=":", linewidth=1, label="chance")
    # Log FPR: at AUROC ~0.99 the curves differ only at small false-positive rates.
    ax.set(xscale="log", xlim=(1e-3, 1), ylim=(0, 1.01))
    ax.set(xlabel="false-positive rate (log)", ylabel="true-positive rate", title="ROC, test set")
    ax.legend(loc="lower right")
    return fig


def score_histograms(
    labels: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]
) -> Figure:
    """Per model: score histograms of normals and anomalies, threshold marked."""
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.6), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, (name, s) in zip(axes[0], scores.items(), strict=True):
        bins = np.geomspace(max(s.min(), 1e-6), s.max(), 60)
        # One outline per histogram, not a patch per bar: the same picture, drawn faster.
        for selected, label in ((labels == 0, "normal"), (labels == 1, "anomaly")):
            ax.hist(s[selected], bins=bins, alpha=0.6, density=True, histtype="stepfilled",
                    label=label)  # fmt: skip
        ax.axvline(thresholds[name], color="black", linestyle="--", label="threshold")
        ax.set(xscale="log", xlabel="anomaly score", ylabel="density (per unit score)",
               title=name.upper())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend()
    return fig


def reconstruction_grid(
    inputs: np.ndarray, reconstructions: dict[str, np.ndarray], titles: list[str],
    image_shape: tuple[int, int, int] = (28, 28, 1),
) -> Figure:
    """Rows: inputs, then each model's reconstructions; one column per image.

    The images (flat, of ``image_shape``) are tiled into one picture (one ``imshow``, not
    one axes each), grayscale or in colour as they are.
    """
    rows = [("input", inputs), *reconstructions.items()]
    (height, width, channels), n = image_shape, inputs.shape[0]
    gap = max(4, min(height, width) // 7)
    side = height  # Row pitch; columns use the width.
    pitch, column = side + gap, width + gap
    tiles = np.ones((len(rows) * pitch - gap, n * column - gap, channels), np.float32)
    for r, (_, images) in enumerate(rows):
        for c in range(n):
            tiles[r * pitch : r * pitch + height, c * column : c * column + width] = (
                np.clip(images[c], 0, 1).reshape(image_shape)
            )
    aspect = width / height  # Columns as wide as the images are, relative to their height.
    fig, ax = plt.subplots(figsize=(0.9 * n * aspect + 0.6, 1.0 * len(rows) + 0.3),
                           layout="constrained")  # fmt: skip
    ax.imshow(tiles[..., 0] if channels == 1 else tiles, cmap="gray", vmin=0, vmax=1)
    centres = np.arange(n) * column + width / 2 - 0.5
    ax.set_xticks(centres, titles, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(rows)) * pitch + side / 2 - 0.5,
                  [name.upper() if name != "input" else "input" for name, _ in rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("test images and reconstructions (normal | anomalous)" if "(A)" in
                 "".join(titles) else "images and reconstructions", fontsize=9)  # fmt: skip
    return fig


def anomaly_map(image: np.ndarray, reconstruction: np.ndarray, heat: np.ndarray,
                title: str) -> Figure:  # fmt: skip
    """One image, its reconstruction and its per-pixel anomaly map (a heat map)."""
    fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.6), layout="constrained")
    for ax, picture, label in zip(axes, (image, reconstruction, heat),
                                  ("image", "reconstruction", "anomaly map"), strict=True):
        shown = ax.imshow(picture, cmap="inferno" if label == "anomaly map" else "gray",
                          vmin=0, vmax=None if label == "anomaly map" else 1)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    fig.suptitle(title, fontsize=9)
    return fig


def training_curves(histories: dict[str, dict[str, list[float]]]) -> Figure:
    """Per-epoch reconstruction error (all models) and KL (models that have it)."""
    fig, (ax_rec, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for name, h in histories.items():
        reconstruction = h.get("reconstruction", h["total"])
        epochs = np.arange(1, len(reconstruction) + 1)
        ax_rec.plot(epochs, reconstruction, label=name.upper())
        if np.any(np.asarray(h.get("kl", 0)) != 0):
            ax_kl.plot(epochs, h["kl"], label=name.upper())
    ax_rec.set(xlabel="epoch", ylabel="squared error per image", title="reconstruction")
    ax_kl.set(xlabel="epoch", ylabel="KL per image (nats)", title="KL(q(z|x) || N(0, I))")
    ax_rec.legend()
    if ax_kl.lines:
        ax_kl.legend()
    return fig


def latent_scatter(
    means: np.ndarray, classes: np.ndarray, normal_class: int, names: tuple[str, ...],
    title: str = "VAE latent means, test images",
) -> Figure:
    """Latent means in 2-D (the first two principal components when wider), by class."""
    if means.shape[1] > 2:
        centred = means - means.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axis_name = centred @ vt[:2].T, "PC"
    else:
        points, axis_name = np.pad(means, ((0, 0), (0, 2 - means.shape[1]))), "z"
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    cmap = plt.get_cmap("tab10")
    # The normal class last, so it is drawn on top of the anomalies.
    for d in sorted(range(len(names)), key=lambda d: d == normal_class):
        sel = classes == d
        if np.any(sel):
            label = f"{names[d]} (normal)" if d == normal_class else names[d]
            ax.scatter(points[sel, 0], points[sel, 1], s=4 if d != normal_class else 8, alpha=0.6,
                       color=cmap(d % 10), label=label)  # fmt: skip
    ax.set(xlabel=f"{axis_name} 1", ylabel=f"{axis_name} 2", title=title)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    return fig


def auroc_vs_beta(summary: dict[str, dict], names: tuple[str, ...]) -> Figure:
    """One panel per class: the AUROC (mean +- std over seeds) of each model with a beta
    against beta; models without one (the AE) as dashed lines.

    With several residual smoothings or learning rates, one colour per combination.
    """
    def series_of(s):
        return (s.get("smoothing") or 0.0, s.get("learning_rate") or 0.0, s.get("score") or "",
                tuple(sorted(s.get("hparams", {}).items())))  # The models' own axes.

    series = sorted({series_of(s) for s in summary.values()})
    smoothings = {sm for sm, _, _, _ in series}
    rates = {lr for _, lr, _, _ in series if lr}
    scores = {sc for _, _, sc, _ in series}
    classes = sorted({d for s in summary.values() for d in s["classes"]})
    cols = min(5, len(classes))
    rows = -(-len(classes) // cols)
    # At least 5 x 3.6 inches: one class's panel must still hold the figure's labels.
    fig, axes = plt.subplots(rows, cols, figsize=(max(3 * cols, 5), max(2.6 * rows, 3.6)),
                             squeeze=False, sharex=True, layout="constrained")  # fmt: skip
    for ax, d in zip(axes.flat, classes, strict=False):
        for i, (smoothing, rate, score, own) in enumerate(series):
            tag = (f" s={smoothing:g}" if len(smoothings) > 1 else "") + \
                (f" lr={rate:g}" if len(rates) > 1 else "") + \
                (f" {score}" if len(scores) > 1 else "") + \
                "".join(f" {a}={v:g}" for a, v in own)  # fmt: skip
            color = f"C{i % 10}"
            group = [s for s in summary.values()
                     if series_of(s) == (smoothing, rate, score, own)]
            for j, model in enumerate(sorted({s["model"] for s in group})):
                curve = sorted(((s["beta"], s) for s in group
                                if s["model"] == model and s["beta"] is not None),
                               key=lambda bs: bs[0])  # fmt: skip
                line = next((s for s in group if s["model"] == model and s["beta"] is None), None)
                if curve:
                    betas = [b for b, _ in curve]
                    means = np.array([s["classes"][d][0] for _, s in curve])
                    stds = np.array([s["classes"][d][1] for _, s in curve])
                    name = "beta-VAE" if model == "vae" else model.upper()
                    ax.errorbar(betas, means, yerr=stds, marker="os^v"[j % 4], capsize=3,
                                color=color, label=f"{name}{tag}")  # fmt: skip
                    ax.set_xscale("log")
                    ax.set_xticks(betas, [f"{b:g}" for b in betas])
                    ax.minorticks_off()
                if line is not None:
                    mean, std = line["classes"][d]
                    ax.axhline(mean, color=color, linestyle=("--", ":", "-.")[j % 3],
                               linewidth=1, label=f"{model.upper()}{tag}")  # fmt: skip
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.1)
        ax.set_title(names[d], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(classes) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("beta")
    fig.supylabel("test AUROC (mean +- std over seeds)")
    return fig


def best_per_class(summary: dict[str, dict], names: tuple[str, ...]) -> Figure:
    """Per-class AUROC bars of each model's best configuration (by mean over classes)."""
    best = {}
    for model in sorted({s["model"] for s in summary.values()}):
        candidates = [(s["mean"][0], label) for label, s in summary.items() if s["model"] == model]
        if candidates:
            best[max(candidates)[1]] = summary[max(candidates)[1]]
    classes = sorted({d for s in summary.values() for d in s["classes"]})
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(classes) + 2), 3.6), layout="constrained")
    width = 0.8 / max(1, len(best))
    x = np.arange(len(classes))
    for i, (label, s) in enumerate(best.items()):
        means = [s["classes"][d][0] for d in classes]
        stds = [s["classes"][d][1] for d in classes]
        ax.bar(x + i * width, means, width, yerr=stds, capsize=2,
               label=f"{label} (mean {s['mean'][0]:.4f})")  # fmt: skip
    ax.set_xticks(x + width * (len(best) - 1) / 2, [names[d] for d in classes], fontsize=7)
    lows = [s["classes"][d][0] for s in best.values() for d in classes]
    ax.set(xlabel="normal class", ylabel="test AUROC", ylim=(max(0.0, min(lows) - 0.05), 1.0),
           title="best of each model\n(chosen by mean test AUROC over classes)")  # fmt: skip
    ax.legend(fontsize=8, loc="lower left")
    return fig
