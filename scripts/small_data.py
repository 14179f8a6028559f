"""The recommended detector for other data (``--preset=best`` on arrays or a folder) against the
plain AE, on small data made from MNIST and Fashion-MNIST: 300 training images of one class,
downsampled to 8x8 or 16x16, tested on 200 normal and 200 anomalous test images (the other
classes), as ``--dataset=arrays`` files.

  python scripts/small_data.py experiments/results/small_data/results.json   # ~15 min, 2 cores

For each task: the plain AE (the seed spec: 30 epochs, plain residual), ``--preset=best``
(the AE and the VAE at beta 1, 60 epochs; the run's recommended model, chosen from training
health and the synthetic AUROC, no test label), and the VAE at beta 1, 60 epochs, smoothing
1 (the benchmarks' joint pick); the test AUROC of each.
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
         for normal in (0, 3, 7)]  # fmt: skip
RUNS = {"plain AE": dict(models=("ae",)),
        "preset best": dict(preset="best", **preset_values("best", "arrays")),
        "VAE beta 1, 60 epochs, smoothing 1": dict(models=("vae",), epochs=60,
                                                   score_smoothing=1.0)}


def resized(images: np.ndarray, side: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x.reshape(28, 28)).resize(
        (side, side), Image.BILINEAR)) for x in images])  # fmt: skip


def make(dataset, side, normal, path):
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


def main(path: str) -> None:
    logging.set_verbosity("error")
    results = []
    with tempfile.TemporaryDirectory() as root:
        for dataset, side, normal in TASKS:
            arrays = os.path.join(root, f"{dataset}_{side}_{normal}.npz")
            make(dataset, side, normal, arrays)
            row = {"dataset": dataset, "side": side, "normal_class": normal}
            for label, settings in RUNS.items():
                record = run(arrays, os.path.join(root, f"{label}_{dataset}_{side}_{normal}"),
                             **settings)  # fmt: skip
                models = record["models"]
                chosen = record.get("recommended", {}).get("model", next(iter(models)))
                row[label] = {"model": chosen, "auroc": models[chosen]["auroc"],
                              "models": {n: {"auroc": m["auroc"], "health": m["health"],
                                             "synthetic_auroc": m["synthetic_auroc"]}
                                         for n, m in models.items()}}  # fmt: skip
            results.append(row)
            print(f"{dataset} {side}x{side} class {normal}: plain AE "  # noqa: T201
                  f"{row['plain AE']['auroc']:.4f}, preset best {row['preset best']['model']} "
                  f"{row['preset best']['auroc']:.4f}", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"train": TRAIN, "test": TEST, "tasks": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
