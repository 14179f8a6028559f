"""The recommended detector for other data (``--preset=best`` on arrays or a folder) against the
plain AE, on small data made from MNIST and Fashion-MNIST: 300 training images of one class,
downsampled to 8x8 or 16x16, tested on 200 normal and 200 anomalous test images (the other
classes), as ``--dataset=arrays`` files; and on RGB crops of two photos (scikit-learn's
sample images, a temple and a flower): 300 crops of 32x32 pixels from the left 60% of one
photo, downsampled to 8x8 or 16x16, tested on 200 crops from its right 40% (normal) and 200
from the other photo (anomalies).

  python scripts/small_data.py experiments/results/small_data/results.json   # ~20 min, 2 cores
  python scripts/small_data.py experiments/results/small_data/results.json photos  # those only

Given dataset names after the file, runs only their tasks and replaces those in the file.

For each task: the plain AE (the seed spec: 30 epochs, plain residual), ``--preset=best``
(the AE and the VAE at beta 1, 30 epochs; the run's recommended model, chosen from training
health and the synthetic AUROC, no test label), the AE at 60 epochs (longer training, for
comparison), and the VAE at beta 1, 60 epochs, smoothing 1 (the benchmarks' joint pick); the
test AUROC of each.
"""

import contextlib
import json
import os
import sys
import tempfile

import numpy as np
from absl import logging
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import pipeline, report  # noqa: E402
from experiments.config import ExperimentConfig, SweepConfig, preset_values  # noqa: E402
from jax_vae import data  # noqa: E402

TRAIN, TEST = 300, 200
TASKS = [(dataset, side, normal) for dataset in ("mnist", "fashion_mnist") for side in (8, 16)
         for normal in (0, 3, 7)] + [("photos", side, normal) for side in (8, 16)
                                     for normal in (0, 1)]  # fmt: skip
CROP = 32  # The photos' crops, before downsampling.
RUNS = {"plain AE": dict(models=("ae",)),
        "preset best": dict(preset="best", **preset_values("best", "arrays")),
        "AE, 60 epochs": dict(models=("ae",), epochs=60),
        "VAE beta 1, 60 epochs, smoothing 1": dict(models=("vae",), epochs=60,
                                                   score_smoothing=1.0)}


def resized(images: np.ndarray, side: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x.reshape(28, 28)).resize(
        (side, side), Image.BILINEAR)) for x in images])  # fmt: skip


def crops(photo: np.ndarray, n: int, columns: tuple[float, float], side: int,
          rng: np.random.Generator, crop: int = CROP) -> np.ndarray:  # fmt: skip
    """``n`` random ``crop`` x ``crop`` crops of ``photo`` whose columns lie in the ``columns``
    share of its width, resized to ``side`` x ``side``."""
    height, width = photo.shape[:2]
    low, high = int(columns[0] * width), int(columns[1] * width) - crop
    out = []
    for _ in range(n):
        top, left = rng.integers(0, height - crop + 1), rng.integers(low, high + 1)
        crop_ = Image.fromarray(photo[top:top + crop, left:left + crop])
        out.append(np.asarray(crop_.resize((side, side), Image.BILINEAR)))
    return np.stack(out)


def make_photos(side, normal, path):
    """Normal: crops of photo ``normal`` (0: the temple, 1: the flower); anomalies: the other's."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    photos = load_sample_images().images
    rng = np.random.default_rng(normal)
    train = crops(photos[normal], TRAIN, (0.0, 0.6), side, rng)
    test = np.concatenate([crops(photos[normal], TEST, (0.6, 1.0), side, rng),
                           crops(photos[1 - normal], TEST, (0.0, 1.0), side, rng)])
    np.savez(path, train_images=train, test_images=test,
             test_labels=np.repeat([0, 1], TEST).astype(np.int32))


def make(dataset, side, normal, path):
    if dataset == "photos":
        return make_photos(side, normal, path)
    source = ("bundled" if dataset == "mnist" else "idx")
    ds = data.load_dataset(source, dataset=dataset, **(
        {} if dataset == "mnist" else {"data_dir": "/work/shared/data/fashion_mnist"}))
    rng = np.random.default_rng(normal)
    train = rng.choice(np.flatnonzero(ds.train_labels == normal), TRAIN, replace=False)
    normals = rng.choice(np.flatnonzero(ds.test_labels == normal), TEST, replace=False)
    anomalies = rng.choice(np.flatnonzero(ds.test_labels != normal), TEST, replace=False)
    test = np.concatenate([normals, anomalies])
    np.savez(path, train_images=resized(ds.train_images[train], side),
             test_images=resized(ds.test_images[test], side),
             test_labels=(ds.test_labels[test] != normal).astype(np.int32))


def run(path, out, **settings):
    config = ExperimentConfig(dataset="arrays", data_dir=path, output_dir=out,
                              tensorboard=False, checkpoint_every=0, **settings)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        result = pipeline.run(SweepConfig.single(config))
        record = report.write(result, out=devnull)
    return record


def evaluate(arrays: str, root: str, name: str, runs: dict) -> dict:
    """Each of ``runs`` (label: settings) on an arrays file, in folders under ``root``: by
    label, the recommended (else the only) model, its test AUROC, and each model's test and
    synthetic AUROC, health findings and score choice."""
    row = {}
    for label, settings in runs.items():
        record = run(arrays, os.path.join(root, f"{label}_{name}"), **settings)
        models = record["models"]
        chosen = record.get("recommended", {}).get("model", next(iter(models)))
        row[label] = {"model": chosen, "auroc": models[chosen]["auroc"],
                      "models": {n: {"auroc": m["auroc"], "health": m["health"],
                                     "synthetic_auroc": m["synthetic_auroc"],
                                     **({"score_choice": m["score_choice"]}
                                        if "score_choice" in m else {})}
                                 for n, m in models.items()}}  # fmt: skip
    return row


def main(path: str, only: tuple[str, ...] = ()) -> None:
    logging.set_verbosity("error")
    results = []
    with tempfile.TemporaryDirectory() as root:
        for dataset, side, normal in TASKS:
            if only and dataset not in only:
                continue
            arrays = os.path.join(root, f"{dataset}_{side}_{normal}.npz")
            make(dataset, side, normal, arrays)
            row = {"dataset": dataset, "side": side, "normal_class": normal,
                   **evaluate(arrays, root, f"{dataset}_{side}_{normal}", RUNS)}
            results.append(row)
            print(f"{dataset} {side}x{side} class {normal}: plain AE "  # noqa: T201
                  f"{row['plain AE']['auroc']:.4f}, preset best {row['preset best']['model']} "
                  f"{row['preset best']['auroc']:.4f}", flush=True)
    if only:  # The other tasks' rows as the file has them, in the order of TASKS.
        with open(path) as f:
            kept = {(r["dataset"], r["side"], r["normal_class"]): r for r in json.load(f)["tasks"]}
        kept.update({(r["dataset"], r["side"], r["normal_class"]): r for r in results})
        results = [kept[t] for t in TASKS if t in kept]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"train": TRAIN, "test": TEST, "tasks": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], tuple(sys.argv[2:]))
