"""The scikit-learn/PyOD-style detector: fit, score, predict, save and load, and a
command-line run loaded as a detector."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import run_single
from sklearn.metrics import roc_auc_score

from experiments.config import ExperimentConfig
from jax_vae import data, detector

TINY = dict(hidden_dims=(32,), latent_dim=4, epochs=2)


def test_fit_score_predict_save_load(mnist, tmp_path):
    normal = mnist.train_images[mnist.train_labels == 0][:1000]  # uint8, as a user has them.
    test = mnist.test_images[:400]
    labels = (mnist.test_labels[:400] != 0).astype(int)
    d = detector.Detector("vae", hparams={"beta": 1.0}, **TINY).fit(jax.random.key(0), normal)
    scores = d.score(test)
    assert scores.shape == (400,) and roc_auc_score(labels, scores) > 0.75  # 2 tiny epochs.
    np.testing.assert_array_equal(d.predict(test), (scores > d.threshold).astype(int))
    # The threshold: the 95th percentile of the 100 held-out normals' scores.
    flagged = d.predict(normal).mean()
    assert 0.01 < flagged < 0.15, flagged
    d.save(str(tmp_path / "det"))
    again = detector.Detector.load(str(tmp_path / "det"))
    assert again.threshold == d.threshold and again.model.name == "vae"
    np.testing.assert_array_equal(again.score(test), scores)
    with pytest.raises(ValueError, match="not fitted"):
        detector.Detector("ae").score(test)
    with pytest.raises(TypeError, match="unknown settings"):
        detector.Detector("ae", epoch=3)


def test_a_command_line_run_loads_as_a_detector(tmp_path):
    run = tmp_path / "run"
    run_single(ExperimentConfig(models=("ae", "vae"), beta=2.0, normal_class=1,
                                anomaly_fraction=0.1, checkpoint_every=1, output_dir=str(run),
                                **TINY))  # fmt: skip
    split = data.one_class_split(data.load_dataset("bundled"), normal_class=1,
                                 anomaly_fraction=0.1)  # fmt: skip
    saved = np.load(run / "scores.npz")
    record = json.loads((run / "metrics.json").read_text())
    for name in ("ae", "vae"):
        d = detector.Detector.load(str(run), model=name)
        assert d.threshold == record["models"][name]["threshold"]
        np.testing.assert_allclose(d.score(split.test_images), saved[f"{name}_test"], rtol=1e-6)
    assert detector.Detector.load(str(run)).model.name == "ae"  # The run's first model.
