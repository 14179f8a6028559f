"""The scikit-learn/PyOD-style detector (fit, score, predict, save, load), a command-line run
loaded as a detector, and experiments.score on image files."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest
from helpers import SIZES, SMALL_RUN, run_single
from PIL import Image
from sklearn.metrics import roc_auc_score

from experiments.config import ConfigError
from jax_vae import data, detector, scores

TINY = dict(**SIZES, epochs=2)


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
    # Saving over a folder is refused and leaves what is there as it was.
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "det").rglob("*"))
    with pytest.raises(FileExistsError):
        again.save(str(tmp_path / "det"))
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "det").rglob("*")) == files
    with pytest.raises(ValueError, match="not fitted"):
        detector.Detector("ae").score(test)
    with pytest.raises(TypeError, match="unknown settings"):
        detector.Detector("ae", epoch=3)


def test_a_detector_with_a_fused_score_fits_saves_and_loads_it(mnist, tmp_path):
    """The k-NN bank (the training images' codes) and the fusion's statistics (the held-out
    normals') are fit with the model, saved and loaded: the same scores after a reload."""
    normal = mnist.train_images[mnist.train_labels == 0][:600]
    d = detector.Detector("ae", score="latent_knn", score_smoothing=1.0, **TINY)
    d.fit(jax.random.key(0), normal)
    test = mnist.test_images[:300]
    got = d.score(test)
    assert roc_auc_score(mnist.test_labels[:300] != 0, got) > 0.75
    assert 0.01 < d.predict(normal).mean() < 0.15  # The threshold is on the fused score.
    d.save(str(tmp_path / "det"))
    np.testing.assert_array_equal(detector.Detector.load(str(tmp_path / "det")).score(test), got)


@pytest.fixture(scope="module")
def run(small_run):
    return small_run  # An AE and a beta-VAE (beta 2) of the command line (conftest).


def test_a_command_line_run_loads_as_a_detector(run):
    split = data.one_class_split(data.load_dataset("bundled"), normal_class=1,
                                 anomaly_fraction=0.1)  # fmt: skip
    saved = np.load(run / "scores.npz")
    record = json.loads((run / "metrics.json").read_text())
    for name in ("ae", "vae"):
        d = detector.Detector.load(str(run), model=name)
        assert d.threshold == record["models"][name]["threshold"]
        np.testing.assert_allclose(d.score(split.test_images), saved[f"{name}_test"], rtol=1e-6)
    assert detector.Detector.load(str(run)).model.name == "ae"  # The run's first model.


def test_score_command_on_files_arrays_and_a_saved_detector(run, mnist, tmp_path, capsys):
    """experiments.score's work in-process (its command line: tests/test_own_images.py)."""
    from experiments.score import score  # noqa: PLC0415

    folder = tmp_path / "new"
    folder.mkdir()
    images = mnist.test_images[:30]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    summary = score(str(run), str(folder), ("ae", "vae"), str(tmp_path / "scored"), maps=1)
    with open(tmp_path / "scored" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [f"img{i:02d}.png" for i in range(30)]
    printed = capsys.readouterr().out
    for name in ("ae", "vae"):
        d = detector.Detector.load(str(run), model=name)
        scores = np.array([float(r[f"{name}_score"]) for r in rows])
        np.testing.assert_allclose(scores, d.score(images), rtol=1e-5)
        flagged = int((scores > d.threshold).sum())
        assert summary[name]["flagged"] == flagged
        assert f"{name}: {flagged} of 30 images flagged" in printed
    # An image file of another size or colour is converted to the run's 28x28 grayscale (with
    # a warning); it scores as Pillow's bilinear resize of its grayscale version does.
    Image.fromarray(np.stack([images[0]] * 3, -1)).resize((56, 56)).save(folder / "rgb.png")
    score(str(run), str(folder / "rgb.png"), ("ae",), str(tmp_path / "rgb"))
    converted = np.asarray(Image.open(folder / "rgb.png").convert("L").resize(
        (28, 28), Image.Resampling.BILINEAR))
    with open(tmp_path / "rgb" / "scores.csv") as f:
        scored = float(next(csv.DictReader(f))["ae_score"])
    ae = detector.Detector.load(str(run), model="ae")
    np.testing.assert_allclose(scored, ae.score(converted[None])[0], rtol=1e-5)
    # An array of another shape is refused, and nothing is written.
    np.save(tmp_path / "big.npy", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match="32x32x1.*28x28x1"):
        score(str(run), str(tmp_path / "big.npy"), ("ae",), str(tmp_path / "no"))
    assert not (tmp_path / "no").exists()
    # A saved detector scores like the run it came from.
    ae.save(str(tmp_path / "saved"))
    score(str(tmp_path / "saved"), str(folder), ("ae",), str(tmp_path / "from_saved"))
    with open(tmp_path / "from_saved" / "scores.csv") as f:
        again = [float(r["ae_score"]) for r in csv.DictReader(f)]
    np.testing.assert_allclose(again[:30], [float(r["ae_score"]) for r in rows], rtol=1e-6)


def test_score_command_on_a_test_folder_reports_each_kind_and_the_metrics(run, mnist, tmp_path):
    """A folder with good/ and kinds of anomaly (any depth): a kind per file, and each
    model's AUROC and F1 against scikit-learn on the same scores."""
    from sklearn.metrics import f1_score  # noqa: PLC0415

    from experiments.score import score  # noqa: PLC0415

    root = tmp_path / "test"
    picks = {"good": mnist.test_images[mnist.test_labels == 1][:20],  # The run's normal class.
             "seven/batch1": mnist.test_images[mnist.test_labels == 7][:10],
             "three": mnist.test_images[mnist.test_labels == 3][:10]}  # fmt: skip
    for folder, images in picks.items():
        (root / folder).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / folder / f"{i:02d}.png")
    Image.fromarray(picks["good"][0]).save(root / "loose.png")  # No kind: not in the metrics.
    summary = score(str(run), str(root), ("ae", "vae"), str(tmp_path / "scored"))
    rows = list(csv.DictReader((tmp_path / "scored" / "scores.csv").open()))
    assert [r["kind"] for r in rows] == [""] + ["good"] * 20 + ["seven"] * 10 + ["three"] * 10
    assert json.loads((tmp_path / "scored" / "summary.json").read_text()) == summary
    labels = np.array([r["kind"] != "good" for r in rows[1:]], int)
    for name in ("ae", "vae"):
        scores = np.array([float(r[f"{name}_score"]) for r in rows[1:]])
        assert summary[name]["images"] == 40
        assert summary[name]["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
        flagged = scores > summary[name]["threshold"]
        assert summary[name]["f1"] == pytest.approx(f1_score(labels, flagged), abs=1e-2)


def test_image_sources_and_their_errors(tmp_path, mnist):
    for i in range(3):
        Image.fromarray(mnist.test_images[i]).save(tmp_path / f"{i}.png")
    names, images = data.read_images(str(tmp_path))
    assert names == ["0.png", "1.png", "2.png"]
    np.testing.assert_array_equal(images, mnist.test_images[:3])
    np.save(tmp_path / "a.npy", mnist.test_images[:4])
    assert data.read_images(str(tmp_path / "a.npy"))[0] == [f"a.npy[{i}]" for i in range(4)]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(data.DataError, match="0.png is 28x28 but .*big.png is 32x32"):
        data.read_images(f"{tmp_path / '0.png'},{tmp_path / 'big.png'}")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(data.DataError, match="notes.png: not a readable image"):
        data.read_images(str(tmp_path / "notes.png"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(data.DataError, match="holds no image files"):
        data.read_images(str(tmp_path / "empty"))


@pytest.mark.parametrize("architecture,hidden", [("mlp", (32,)), ("conv", (4, 8))])
def test_any_image_size_and_channel_count(mnist, architecture, hidden):
    # 30x30 RGB: normal = a tinted digit 0 in the corner, anomalies = other digits. The conv
    # models pad 30 to 32 (two stride-2 layers) and crop back; the blur runs per channel.
    def rgb(images):
        out = np.zeros((len(images), 30, 30, 3), np.uint8)
        out[:, :28, :28] = images[..., None] * np.array([1.0, 0.6, 0.3])
        return out

    normal = rgb(mnist.train_images[mnist.train_labels == 0][:600])
    test = rgb(mnist.test_images[:300])
    labels = (mnist.test_labels[:300] != 0).astype(int)
    d = detector.Detector("ae", hidden_dims=hidden, latent_dim=4, epochs=2, batch_size=64,
                          architecture=architecture, score_smoothing=1.0)  # fmt: skip
    d.fit(jax.random.key(0), normal)
    assert d.settings["image_shape"] == (30, 30, 3)
    scores = d.score(test)
    assert roc_auc_score(labels, scores) > 0.6
    np.testing.assert_allclose(d.score(test.reshape(300, -1)), scores, rtol=1e-6)  # Flat too.
    with pytest.raises(ValueError, match=r"do not fit the detector's 30x30x3"):
        d.score(mnist.test_images[:5])


def test_blur_per_channel_equals_scipy():
    from scipy import ndimage  # noqa: PLC0415

    from jax_vae import scoring  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x, x_hat = rng.uniform(size=(2, 12 * 10 * 3)).astype(np.float32)
    got = scoring.make_residual_error(1.5, (12, 10, 3))(x, x_hat)
    residual = (x - x_hat).reshape(12, 10, 3).astype(np.float64)
    blurred = np.stack([ndimage.gaussian_filter(residual[..., c], 1.5, mode="constant")
                        for c in range(3)], axis=-1)  # fmt: skip
    np.testing.assert_allclose(float(got), np.mean(blurred**2), rtol=1e-5)


def test_bad_images_are_one_clear_error_before_any_work():
    d = detector.Detector("ae", hidden_dims=(8,), latent_dim=2, epochs=1)
    for images, needle in (
        (np.zeros((0, 28, 28), np.uint8), "at least 2 images"),
        (np.zeros((1, 28, 28), np.uint8), "at least 2 images"),
        (np.zeros((5, 1, 1), np.uint8), "at least 2x2 pixels"),
        (np.zeros((2, 10_000, 10_000), np.uint8), "downscale the images first"),  # 200 MB.
        (np.full((5, 28, 28), 255.0, np.float32), r"floats in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=needle):
            d.fit(jax.random.key(0), images)


@pytest.mark.slow
@pytest.mark.parametrize("score", scores.BUILTIN)
def test_a_run_loads_and_reproduces_its_test_scores_whatever_its_score(score, tmp_path):
    """Every built-in score fits what it needs (a k-NN bank, a fusion's statistics), saves it
    with the run and loads it back: the detector and experiments.score give the run's own
    test scores."""
    from experiments.config import ExperimentConfig  # noqa: PLC0415
    from experiments.score import score as score_command  # noqa: PLC0415

    out = tmp_path / "run"
    run_single(ExperimentConfig(score=score, score_smoothing=1.0, output_dir=str(out),
                                **{**SMALL_RUN, "epochs": 1}))  # fmt: skip
    saved = np.load(out / "scores.npz")
    split = data.one_class_split(data.load_dataset("bundled"), normal_class=1,
                                 anomaly_fraction=0.1)  # fmt: skip
    np.save(tmp_path / "some.npy", split.test_images[:40].reshape(40, 28, 28))
    summary = score_command(str(out), str(tmp_path / "some.npy"), ("ae", "vae"),
                            str(tmp_path / "scored"))  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "scored" / "scores.csv").open()))
    for name in ("ae", "vae"):
        d = detector.Detector.load(str(out), model=name)
        np.testing.assert_allclose(d.score(split.test_images), saved[f"{name}_test"], rtol=1e-6)
        # Scored in a batch of another size: the k-NN distances' matrix products round
        # otherwise (about 1e-5 of a fused score's range); the rest to the CSV's 6 digits.
        got, want = np.array([float(r[f"{name}_score"]) for r in rows]), saved[f"{name}_test"][:40]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.ptp(want))
        assert summary[name]["threshold"] == d.threshold
