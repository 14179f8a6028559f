"""scikit-learn baselines on a small split of the real data."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import cli, one_line_error
from sklearn.metrics import roc_auc_score

from jax_vae import baselines, rules


@pytest.fixture(scope="module")
def small(split0):
    rng = np.random.default_rng(0)
    test = rng.choice(split0.test_images.shape[0], 600, replace=False)
    return split0.train_images[:800], split0.test_images[test], split0.test_labels[test]


@pytest.mark.parametrize("name", baselines.BASELINES)
def test_baselines_separate_digit0_from_anomalies(name, small):
    train, test, labels = small
    scores = baselines.fit_baseline(name, train)(test)
    assert scores.shape == (600,) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores))
    assert roc_auc_score(labels, scores) > 0.85, name


def test_pca_score_matches_numpy_reference(small):
    train, test, _ = small
    got = baselines.fit_baseline("pca", train, pca_components=5)(test)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:5]
    recon = (test - mean) @ basis.T @ basis + mean
    np.testing.assert_allclose(got, np.mean((test - recon) ** 2, axis=1), rtol=1e-3, atol=1e-6)


def test_knn_score_matches_brute_force(small):
    train, test, _ = small
    got = baselines.fit_baseline("knn", train, knn_k=3)(test[:20])
    d = np.sqrt(((test[:20, None, :] - train[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(got, np.sort(d, axis=1)[:, :3].mean(axis=1), rtol=1e-4)


def test_unknown_baseline():
    with pytest.raises(rules.InvalidArgument, match="name must be one of pca, knn"):
        baselines.fit_baseline("lof", np.zeros((10, 784), np.float32))


@pytest.mark.slow
def test_baselines_command_writes_results(tmp_path):
    out = tmp_path / "b"
    proc = cli("baselines", "--digits=1", "--baselines=pca,iforest", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PCA" in proc.stdout and "IFOREST" in proc.stdout
    assert {"baselines.json", "baselines.csv", "summary.txt", "config.json"} <= set(os.listdir(out))
    assert "--baselines must be one of" in one_line_error(cli("baselines", "--baselines=lof"))
