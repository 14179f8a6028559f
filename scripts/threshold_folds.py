"""How well a threshold set from few normal images holds: the held-out threshold against the
cross-fitted one (``Detector(threshold_folds=5)``), judged by the share of other normal images
each flags (nominal 5%). 150 MNIST training zeros per draw, the default AE, 8 draws; the
other 5,773 training zeros are the fresh normals (no test image is read).

  python scripts/threshold_folds.py experiments/results/threshold_folds/figures.json  # ~20 s
"""

import json
import sys

import jax
import numpy as np
from absl import logging

from jax_vae import data, detector

DRAWS, NORMALS, FOLDS = 8, 150, 5


def main(path: str) -> None:
    logging.set_verbosity("error")
    mnist = data.load_dataset("bundled")
    zeros = mnist.train_images[mnist.train_labels == 0]
    flagged = {"held_out": [], "cross_fitted": []}
    for draw in range(DRAWS):
        order = np.random.default_rng(draw).permutation(len(zeros))
        small, fresh = zeros[order[:NORMALS]], zeros[order[NORMALS:]]
        for name, folds in (("held_out", 0), ("cross_fitted", FOLDS)):
            d = detector.Detector("ae", threshold_folds=folds).fit(jax.random.key(draw), small)
            flagged[name].append(float(d.predict(fresh).mean()))
    record = {"normals": NORMALS, "fresh": int(len(zeros) - NORMALS), "folds": FOLDS,
              "flagged": flagged,
              "summary": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                          for k, v in flagged.items()}}  # fmt: skip
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record["summary"]))  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1])
