"""Training health (jax_vae.health) on histories and on models made to fail, in the library,
the detector and a run's files; the threshold's interval (jax_vae.metrics.fpr_interval)
against a known score distribution."""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
import optax
import pytest
from helpers import SIZES, run_single
from scipy import stats

from experiments.config import ExperimentConfig
from jax_vae import detector, health, metrics, registry, train

FAIL = dict(epochs=10, batch_size=32)  # 256 images: 8 steps an epoch.


@pytest.fixture(scope="module")
def ones(split0):
    return split0.train_images[:256]


def _train(images, name, hparams, tx):
    model = registry.build(name, **SIZES)
    result = train.train(jax.random.key(0), images, hparams, model=model, tx=tx, hooks=(),
                         **FAIL)  # fmt: skip
    return health.check(result.history, baseline=health.baseline_loss(images))


def test_baseline_loss_is_the_mean_images_error_as_numpy_computes_it(ones):
    x = np.asarray(ones, np.float64)
    mean = x.mean(axis=0)
    np.testing.assert_allclose(health.baseline_loss(ones),
                               np.mean(np.sum((x - mean) ** 2, axis=1)), rtol=1e-5)  # fmt: skip
    p = np.clip(mean, 1e-6, 1 - 1e-6)
    bce = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1).mean()
    np.testing.assert_allclose(health.baseline_loss(ones, likelihood="bernoulli"), bce,
                               rtol=1e-4)  # fmt: skip


def test_each_symptom_of_a_known_history():
    falling = np.array([60.0, 30, 20, 15, 12, 10])
    assert health.check({"total": falling}, baseline=50.0) == []
    kl = {"total": falling + 3, "reconstruction": falling, "kl": np.array([3, 2, 1, .5, .2, .1])}
    assert [f.symptom for f in health.check(kl)] == ["posterior collapse"]
    rising = np.array([60.0, 30, 20, 21, 24, 26])  # The last two: 20% and 30% above its best.
    assert [f.symptom for f in health.check({"total": rising})] == ["diverging"]
    blip = np.array([60.0, 30, 20, 20, 20, 23])  # One noisy epoch 15% up: not a trend.
    assert health.check({"total": blip}) == []
    assert [f.symptom for f in health.check({"total": np.array([60.0, np.nan])})] == [
        "diverging"]
    # No better than the mean image: still falling (train longer) or stalled (lower the rate).
    slow, stalled = np.array([90.0, 80, 70]), np.array([90.0, 70, 70])
    (a,), (b,) = health.check({"total": slow}, baseline=60), health.check({"total": stalled},
                                                                          baseline=60)
    assert a.symptom == b.symptom == "no learning"
    assert "longer" in a.remedy and "lower learning rate" in b.remedy


def test_models_made_to_fail_are_named_and_a_healthy_one_is_not(ones):
    adam = train.adam(1e-2)
    assert _train(ones, "ae", {}, adam) == []
    assert _train(ones, "vae", {"beta": 1.0}, adam) == []
    # A VAE at a large beta on a tiny set: its posterior collapses.
    collapsed = _train(ones, "vae", {"beta": 50.0}, adam)
    assert "posterior collapse" in [f.symptom for f in collapsed]
    # A learning rate that doubles every epoch: the loss falls, then climbs.
    growing = optax.adam(optax.exponential_decay(1e-2, 8, 2.0))
    assert "diverging" in [f.symptom for f in _train(ones, "ae", {}, growing)]


def test_the_detector_warns_and_keeps_its_findings(ones, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    d = detector.Detector("vae", hparams={"beta": 50.0}, **SIZES, **FAIL, learning_rate=1e-2)
    d.fit(jax.random.key(0), ones)
    assert any("posterior collapse" in line for line in d.health)
    assert all(line in caplog.text for line in d.health)
    # 26 held-out normals: the warning gives the interval of the share flagged.
    assert d.held_out == 26 and d.fpr_interval == metrics.fpr_interval(26)
    assert "held-out normal image(s)" in caplog.text
    d.save(str(tmp_path / "d"))
    again = detector.Detector.load(str(tmp_path / "d"))
    assert again.health == d.health and again.fpr_interval == d.fpr_interval


@pytest.mark.slow
def test_a_run_writes_its_findings_and_the_thresholds_interval(tmp_path):
    out = tmp_path / "run"
    run_single(ExperimentConfig(models=("ae", "vae"), beta=300.0, epochs=2, normal_class=1,
                                anomaly_fraction=0.1, output_dir=str(out), **SIZES))  # fmt: skip
    models = json.loads((out / "metrics.json").read_text())["models"]
    results = (out / "results.txt").read_text()
    assert any(line.startswith("posterior collapse") for line in models["vae"]["health"])
    for name in ("ae", "vae"):
        for line in models[name]["health"]:
            assert f"warning: {name}: {line}" in results
    held_out = models["ae"]["held_out"]
    low, high = metrics.fpr_interval(held_out)
    assert (models["ae"]["fpr_low"], models["ae"]["fpr_high"]) == (low, high)
    assert f"{held_out} held-out normal images" in results and f"{high:.1%}" in results
    assert os.path.exists(out / "scores.npz")


def test_the_interval_covers_the_share_flagged_by_a_uniform_scores_threshold():
    # Scores U(0, 1): a threshold t flags a share 1 - t of all normals, exactly.
    rng = np.random.default_rng(0)
    for n in (15, 21, 60):  # 21: the 95th percentile is one order statistic (the 20th).
        low, high = metrics.fpr_interval(n)
        flagged = 1 - np.percentile(rng.uniform(size=(20000, n)), 95, axis=1)
        covered = np.mean((flagged >= low) & (flagged <= high))
        assert 0.94 <= covered <= 0.99, (n, covered)
    # One order statistic: the Beta quantiles exactly, as scipy computes them.
    np.testing.assert_allclose(metrics.fpr_interval(21), stats.beta(2, 20).ppf([.025, .975]))
    flagged = 1 - np.percentile(rng.uniform(size=(20000, 21)), 95, axis=1)
    np.testing.assert_allclose(np.quantile(flagged, [.025, .975]), metrics.fpr_interval(21),
                               atol=0.005)  # fmt: skip
    # Wider with fewer held-out normals, around the nominal 5%.
    (a, b), (c, d) = metrics.fpr_interval(50), metrics.fpr_interval(500)
    assert a < c < 0.05 < d < b


def test_a_cross_fitted_threshold_flags_nearer_the_nominal_share(mnist):
    # 150 normal images: held out, 15 set the threshold; cross-fitted, all 150 do. Judged by
    # the share of 5,000 other normal images (of the same distribution) each flags.
    zeros = mnist.train_images[mnist.train_labels == 0]
    errors = {0: [], 5: []}
    for seed in range(3):
        pick = np.random.default_rng(seed).permutation(len(zeros))
        small, fresh = zeros[pick[:150]], zeros[pick[150:5150]]
        for folds in errors:
            d = detector.Detector("ae", threshold_folds=folds).fit(jax.random.key(seed), small)
            errors[folds].append(abs(d.predict(fresh).mean() - 0.05))
            assert d.held_out == (150 if folds else 15)
    assert np.mean(errors[5]) < np.mean(errors[0]) / 2, errors
    with pytest.raises(ValueError, match="threshold_folds"):
        detector.Detector("ae", threshold_folds=200, **SIZES).fit(jax.random.key(0), small)


def test_the_recommended_model_is_the_healthy_one_with_the_best_synthetic_auroc():
    collapsed = ["posterior collapse: ..."]
    assert health.recommend({"ae": ([], 0.80), "vae": ([], 0.85)})[0] == "vae"
    assert health.recommend({"ae": ([], 0.80), "vae": (collapsed, 0.95)})[0] == "ae"
    assert health.recommend({"ae": ([], 0.85), "vae": ([], 0.85)})[0] == "ae"  # A tie.
    name, why = health.recommend({"ae": (["no learning"], 0.9), "vae": (collapsed, 0.9)})
    assert name == "ae" and "ae, vae did not train well" in why
    # A warned AE is kept unless a healthy model beats its synthetic AUROC (a diverged one's,
    # NaN, is beaten by any).
    assert health.recommend({"ae": (["diverging"], 0.75), "vae": ([], 0.66)})[0] == "ae"
    assert health.recommend({"ae": (["diverging"], 0.75), "vae": ([], 0.80)})[0] == "vae"
    assert health.recommend({"ae": (["diverging"], float("nan")), "vae": ([], 0.6)})[0] == "vae"
    assert health.recommend({"vae": (collapsed, 0.9), "dae": ([], 0.7)})[0] == "dae"


@pytest.mark.slow
def test_a_run_recommends_a_model_and_the_detector_loads_it(tmp_path):
    out = tmp_path / "run"
    run_single(ExperimentConfig(models=("ae", "vae"), beta=300.0, epochs=2, normal_class=1,
                                anomaly_fraction=0.1, output_dir=str(out), **SIZES))  # fmt: skip
    record = json.loads((out / "metrics.json").read_text())
    assert record["recommended"]["model"] == "ae"  # Both warned: the fallback.
    assert "recommended: AE" in (out / "results.txt").read_text()
    assert detector.Detector.load(str(out)).name == "ae"


def test_map_scores_are_candidates_only_on_images_larger_than_the_benchmarks():
    from jax_vae import scores  # noqa: PLC0415

    assert health.score_candidates((28, 28, 1), "residual", scores.MAP_SCORES) == ("residual",)
    assert health.score_candidates((16, 16, 3), "rapp", scores.MAP_SCORES) == ("rapp",)
    assert health.score_candidates((29, 28, 3), "residual", scores.MAP_SCORES) == (
        "residual", "residual_top", "residual_max")  # fmt: skip
    assert health.score_candidates((64, 64, 1), "residual_max",
                                   ("residual_top", "residual_max")) == (
        "residual_max", "residual_top")  # fmt: skip
    assert health.score_candidates((64, 64, 1), "residual", ()) == ("residual",)


def test_an_alternative_score_must_beat_the_configured_one_by_the_margin():
    assert health.choose_score({"residual": 0.80, "residual_top": 0.805})[0] == "residual"
    assert health.choose_score({"residual": 0.80, "residual_top": 0.80 + health.SCORE_MARGIN})[
        0] == "residual"  # Equal to the margin: kept.
    name, why = health.choose_score({"residual": 0.80, "residual_top": 0.82,
                                     "residual_max": 0.85})  # fmt: skip
    assert name == "residual_max" and "residual 0.800" in why
    assert health.choose_score({"residual": 0.80, "residual_top": 0.82,
                                "residual_max": float("nan")})[0] == "residual_top"  # fmt: skip
    assert health.choose_score({"residual": None, "residual_top": 0.5})[0] == "residual_top"
    assert health.choose_score({"residual": 0.9})[0] == "residual"


def _upscaled(images, side=32):
    """28x28 digits [N, 784] (0-255) as side x side uint8 images [N, side, side] (nearest
    pixels)."""
    index = np.arange(side) * 28 // side
    return np.round(np.asarray(images)).astype(np.uint8).reshape(-1, 28, 28)[:, index][:, :, index]


def _map_score(detector_, images, name):
    """residual_max or residual_top as NumPy computes them: the largest squared pixel error,
    or the mean of the largest 1% of them."""
    reconstruct = jax.vmap(detector_.model.reconstruct(), in_axes=(None, 0))
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255
    errors = np.sort((x - np.asarray(reconstruct(detector_.params, x.astype(np.float32)))) ** 2)
    k = 1 if name == "residual_max" else max(1, round(0.01 * x.shape[1]))
    return errors[:, -k:].mean(axis=1)


@pytest.mark.slow
def test_a_run_on_large_images_scores_each_model_by_its_chosen_score(tmp_path, split0, mnist,
                                                                     monkeypatch):
    """--score_alternatives: each model's score chosen from its synthetic AUROCs alone (here
    with a margin below zero, so that an alternative is chosen), recorded, written to
    scores.npz, and the one Detector.load and the library score with."""
    from functools import partial  # noqa: PLC0415

    monkeypatch.setattr(health, "choose_score", partial(health.choose_score, margin=-1.0))
    test = np.concatenate([mnist.test_images[mnist.test_labels == 1][:60],
                           mnist.test_images[mnist.test_labels == 7][:40]])
    labels = np.r_[np.zeros(60), np.ones(40)].astype(np.int32)
    np.savez(tmp_path / "big.npz", train_images=_upscaled(split0.train_images[:300] * 255),
             test_images=_upscaled(test), test_labels=labels)  # fmt: skip
    out = tmp_path / "run"
    run_single(ExperimentConfig(
        dataset="arrays", data_dir=str(tmp_path / "big.npz"), models=("ae",), epochs=2,
        score_alternatives=("residual_top", "residual_max"), output_dir=str(out), **SIZES))
    choice = json.loads((out / "metrics.json").read_text())["models"]["ae"]["score_choice"]
    aurocs = choice["synthetic_auroc"]
    assert list(aurocs) == ["residual", "residual_top", "residual_max"]
    assert choice["score"] == max(["residual_top", "residual_max"], key=aurocs.get)
    assert f"AE      {choice['score']}:" in (out / "results.txt").read_text()
    loaded = detector.Detector.load(str(out))
    assert loaded.settings["score"] == choice["score"] == loaded.score_choice["score"]
    saved = np.load(out / "scores.npz")["ae_test"]
    np.testing.assert_allclose(loaded.score(_upscaled(test)), saved, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(saved, _map_score(loaded, _upscaled(test), choice["score"]),
                               rtol=1e-4)  # fmt: skip


def test_the_detector_chooses_its_score_on_large_images_and_keeps_it(tmp_path, split0,
                                                                     monkeypatch):
    from functools import partial  # noqa: PLC0415

    from jax_vae import scores  # noqa: PLC0415

    images = _upscaled(split0.train_images[:200] * 255)
    plain = detector.Detector(epochs=2, **SIZES).fit(jax.random.key(0), images[:, :28, :28])
    assert plain.score_choice is None and plain.settings["score"] == "residual"
    assert detector.Detector(epochs=2, **SIZES).fit(jax.random.key(0), images).score_choice \
        is None  # None by default.  # fmt: skip
    monkeypatch.setattr(health, "choose_score", partial(health.choose_score, margin=-1.0))
    d = detector.Detector(epochs=2, score_alternatives=scores.MAP_SCORES, **SIZES).fit(
        jax.random.key(0), images)  # fmt: skip
    assert d.settings["score"] in ("residual_top", "residual_max")
    assert d.settings["score"] == d.score_choice["score"]
    np.testing.assert_allclose(d.score(images[:20]), _map_score(d, images[:20],
                                                                d.settings["score"]), rtol=1e-4)
    d.save(str(tmp_path / "d"))
    loaded = detector.Detector.load(str(tmp_path / "d"))
    assert loaded.score_choice == d.score_choice
    np.testing.assert_allclose(loaded.score(images[:20]), d.score(images[:20]), rtol=1e-6)
    d.fit(jax.random.key(0), images[:, :28, :28])  # A refit chooses anew, from the residual.
    assert d.score_choice is None and d.settings["score"] == "residual"
    with pytest.raises(ValueError, match="score_alternatives=residual_top needs vae_score"):
        detector.Detector("vae", vae_score="mc", score_alternatives=("residual_top",))
