"""The recommended detector for other data (``--preset=best``) against the plain AE on images
larger than the benchmarks', and the rule that would let it score a model by its anomaly
map's largest values instead of its mean (``--score_alternatives``, chosen by synthetic AUROC:
``jax_vae.health.choose_score``). Tasks, each 300 training images and a test set of 200
normal and 200 anomalous images, as ``--dataset=arrays`` files:

* MNIST digits 0 and 3 upscaled to 56x56 (bilinear), against the other digits: anomalies
  that change the whole image;
* 64x64 RGB crops of a photo (scikit-learn's sample images: the temple, the flower; training
  crops from the left 60% of the photo, test crops from its right 40%), against crops of the
  other photo (whole-image anomalies) or against the photo's own test crops with one thin
  dark scratch each (a line about 1 pixel wide, a quarter to half the crop long, darkening
  the pixels under it by 80%: small, local defects); and the temple's scratches at 128x128.

  python scripts/large_data.py experiments/results/large_data/results.json   # ~30 min, 2 cores

For each task: the plain AE (the seed spec: 30 epochs, mean residual), ``--preset=best``
(the run's recommended model; no test label), ``--preset=best`` with
``--score_alternatives=residual_top,residual_max`` (each model's score chosen by synthetic
AUROC, then the recommended model: the rule fixed before these tasks ran, which the preset
does not use), and, for comparison, the AE scored by ``residual_top`` and by
``residual_max``; the test AUROC of each.
"""

import json
import os
import sys
import tempfile

import numpy as np
from absl import logging
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from small_data import TEST, TRAIN, crops, evaluate  # noqa: E402

from experiments.config import preset_values  # noqa: E402
from jax_vae import data  # noqa: E402
from jax_vae.scores import MAP_SCORES  # noqa: E402

TASKS = [("digits", 56, 0), ("digits", 56, 3), ("photos", 64, 0), ("photos", 64, 1),
         ("scratches", 64, 0), ("scratches", 64, 1), ("scratches", 128, 0)]  # fmt: skip
RUNS = {"plain AE": dict(models=("ae",)),
        "preset best": dict(preset="best", **preset_values("best", "arrays")),
        # The rule fixed with this script, before any of its choices was tested: each model's
        # score chosen from the residual and the anomaly map's (by synthetic AUROC).
        "preset best, map alternatives": dict(preset="best", score_alternatives=MAP_SCORES,
                                              **preset_values("best", "arrays")),
        "AE residual_top": dict(models=("ae",), score="residual_top"),
        "AE residual_max": dict(models=("ae",), score="residual_max")}


def scratch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` [H, W, C] uint8 with one thin dark line: about 1 pixel wide, a quarter to
    half the image's side long, anywhere in its central half, darkening by 80%."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, 2) * (height, width)
    angle, half = rng.uniform(0, np.pi), rng.uniform(0.125, 0.25) * min(height, width)
    dy, dx = np.sin(angle), np.cos(angle)
    t = np.clip((ys - cy) * dy + (xs - cx) * dx, -half, half)
    ink = np.clip(1.0 - np.hypot(ys - (cy + t * dy), xs - (cx + t * dx)), 0, 1)[..., None]
    return np.round(image * (1 - 0.8 * ink)).astype(np.uint8)


def make(kind: str, side: int, normal: int, path: str) -> None:
    rng = np.random.default_rng(normal)
    if kind == "digits":
        ds = data.load_dataset("bundled")
        train = rng.choice(np.flatnonzero(ds.train_labels == normal), TRAIN, replace=False)
        test = np.concatenate([
            rng.choice(np.flatnonzero(ds.test_labels == normal), TEST, replace=False),
            rng.choice(np.flatnonzero(ds.test_labels != normal), TEST, replace=False)])

        def up(images):
            return np.stack([np.asarray(Image.fromarray(x.reshape(28, 28)).resize(
                (side, side), Image.BILINEAR)) for x in images])  # fmt: skip

        np.savez(path, train_images=up(ds.train_images[train]),
                 test_images=up(ds.test_images[test]),
                 test_labels=(ds.test_labels[test] != normal).astype(np.int32))  # fmt: skip
        return
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    photos = load_sample_images().images
    train = crops(photos[normal], TRAIN, (0.0, 0.6), side, rng, crop=side)
    normals = crops(photos[normal], TEST, (0.6, 1.0), side, rng, crop=side)
    if kind == "photos":
        anomalies = crops(photos[1 - normal], TEST, (0.0, 1.0), side, rng, crop=side)
    else:
        anomalies = np.stack([scratch(x, rng) for x in
                              crops(photos[normal], TEST, (0.6, 1.0), side, rng, crop=side)])
    np.savez(path, train_images=train, test_images=np.concatenate([normals, anomalies]),
             test_labels=np.repeat([0, 1], TEST).astype(np.int32))  # fmt: skip


def main(path: str) -> None:
    logging.set_verbosity("error")
    results = []
    with tempfile.TemporaryDirectory() as root:
        for kind, side, normal in TASKS:
            arrays = os.path.join(root, f"{kind}_{side}_{normal}.npz")
            make(kind, side, normal, arrays)
            row = {"dataset": kind, "side": side, "normal_class": normal,
                   **evaluate(arrays, root, f"{kind}_{side}_{normal}", RUNS)}
            results.append(row)
            best, rule = row["preset best"], row["preset best, map alternatives"]
            choice = rule["models"][rule["model"]]["score_choice"]
            print(f"{kind} {side}x{side} {normal}: plain AE {row['plain AE']['auroc']:.4f}, "  # noqa: T201
                  f"preset best {best['model']} {best['auroc']:.4f}, with map alternatives "
                  f"{rule['model']} {choice['score']} {rule['auroc']:.4f}", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"train": TRAIN, "test": TEST, "tasks": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
