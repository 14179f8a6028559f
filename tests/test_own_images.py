"""A user's own images: --dataset=folder (the MVTec AD / anomalib layout) and --dataset=arrays,
end to end on real image files, and the bad input each gets one clear error for."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest
from helpers import SIZES, cli, fashion_mnist_dir, one_line_error, run_grid, run_single
from PIL import Image
from sklearn.metrics import roc_auc_score

from experiments.config import ConfigError, ExperimentConfig, SweepConfig, validate
from jax_vae import data, detector, rules

TINY = dict(**SIZES, epochs=2, batch_size=32)
SNEAKER, SANDAL, BAG = 7, 5, 8


@pytest.fixture(scope="module")
def fashion():
    folder = fashion_mnist_dir()
    if folder is None:
        pytest.skip("no Fashion-MNIST files (../shared/data/fashion_mnist)")
    return data.load_dataset("idx", dataset="fashion_mnist", data_dir=folder)


def write_pngs(folder, images, *, size=None, rgb=False):
    """Images as PNG files 00000.png ... (in order), resized and in colour if asked."""
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        picture = Image.fromarray(image)
        picture = picture.resize(size, Image.Resampling.BILINEAR) if size else picture
        (picture.convert("RGB") if rgb else picture).save(
            os.path.join(folder, f"{i:05d}.png"), compress_level=0)  # Quick to write.


@pytest.fixture(scope="module")
def parts(fashion, tmp_path_factory):
    """Fashion-MNIST as a user's 32x32 RGB folder: sneakers normal; sandals and bags two
    kinds of anomaly."""
    root = tmp_path_factory.mktemp("parts")
    f = fashion
    write_pngs(root / "train" / "good", f.train_images[f.train_labels == SNEAKER][:400],
               size=(32, 32), rgb=True)  # fmt: skip
    for kind, label, n in (("good", SNEAKER, 60), ("sandal", SANDAL, 30), ("bag", BAG, 30)):
        write_pngs(root / "test" / kind, f.test_images[f.test_labels == label][:n],
                   size=(32, 32), rgb=True)  # fmt: skip
    return root


@pytest.mark.slow
def test_a_folder_trains_scores_and_loads_as_a_detector(parts, tmp_path):
    run = tmp_path / "run"
    run_single(ExperimentConfig(dataset="folder", data_dir=str(parts), output_dir=str(run),
                                checkpoint_every=2, **TINY), plots=True)  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["image_shape"] == [32, 32, 3]
    assert config["test_kinds"] == ["good", "bag", "sandal"]
    assert config["splits"]["0"] == {**config["splits"]["0"], "train": 360, "val": 40, "test": 120}
    # Per kind: the AUROC of the normal test images against that kind's (scikit-learn).
    saved, record = np.load(run / "scores.npz"), json.loads((run / "metrics.json").read_text())
    classes = saved["classes"]
    for name in ("ae", "vae"):
        test = saved[f"{name}_test"]
        for k, kind in ((1, "bag"), (2, "sandal")):
            keep = (classes == 0) | (classes == k)
            assert record["models"][name]["kinds"][kind] == pytest.approx(
                roc_auc_score(classes[keep] == k, test[keep]))  # fmt: skip
    assert "AUROC per kind of anomaly" in (run / "results.txt").read_text()
    assert (run / "reconstructions.png").stat().st_size > 0

    # experiments.score on a folder of the test images: one row each, flags at the threshold.
    new = parts / "test" / "sandal"
    out = tmp_path / "scored"
    proc = cli("score", f"--run={run}", f"--images={new}", "--maps=2", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    files = sorted(os.listdir(new))
    assert [r["file"] for r in rows] == files
    # The images as Pillow reads them, scored by the run loaded as a detector.
    images = np.stack([np.asarray(Image.open(new / n)) for n in files])
    for name in ("ae", "vae"):
        scores = np.array([float(r[f"{name}_score"]) for r in rows])
        flagged = np.array([int(r[f"{name}_flagged"]) for r in rows])
        d = detector.Detector.load(str(run), model=name)
        assert d.threshold == record["models"][name]["threshold"]
        np.testing.assert_array_equal(flagged, scores > d.threshold)
        assert f"{name}: {flagged.sum()} of {len(files)} images flagged" in proc.stdout
        np.testing.assert_allclose(scores, d.score(images), rtol=1e-5)
        assert (out / f"map_{name}_002.png").exists() and not (out / f"map_{name}_003.png").exists()


def test_a_folder_without_test_images_sets_the_threshold_and_says_why(parts, tmp_path):
    os.makedirs(tmp_path / "only")
    os.symlink(parts / "train", tmp_path / "only" / "train")
    run = tmp_path / "run"
    record = run_single(ExperimentConfig(dataset="folder", data_dir=str(tmp_path / "only"),
                                         output_dir=str(run), channels=1, image_size=(20, 24),
                                         models=("ae",), checkpoint_every=0, **TINY))  # fmt: skip
    ae = record["models"]["ae"]
    assert ae["auroc"] is None and ae["f1"] is None and ae["threshold"] > 0
    assert 0 <= ae["synthetic_auroc"] <= 1
    assert "no test images" in (run / "results.txt").read_text()
    assert json.loads((run / "config.json").read_text())["image_shape"] == [20, 24, 1]
    # A grid of them: the synthetic AUROC selects, no test AUROC to summarize.
    grid = SweepConfig(betas=(1.0,), seeds=(0, 1), classes=(0,), base=ExperimentConfig(
        dataset="folder", data_dir=str(tmp_path / "only"), models=("ae",), checkpoint_every=0,
        output_dir=str(tmp_path / "grid"), tensorboard=False, **TINY))  # fmt: skip
    sweep = run_grid(grid, kind="sweep")
    assert [r["auroc"] for r in sweep["rows"]] == [None, None]
    assert "selected by synthetic AUROC" in (tmp_path / "grid" / "summary.txt").read_text()


def test_a_folder_holds_the_split_of_the_same_class_as_idx_files(fashion, tmp_path):
    """The Sandal class written as 28x28 grayscale PNGs (train/, test/good/, one folder per
    other class; three of them) and read back as a folder: the same training and held-out
    images (the split's fingerprint) and the same test images as --dataset=fashion_mnist, so
    the same models and AUROC (docs/benchmarks.md: equal at 30 epochs with every class)."""
    f = fashion
    write_pngs(tmp_path / "sandal" / "train", f.train_images[f.train_labels == SANDAL])
    kinds = {"good": SANDAL, "class9": 9, "class0": 0, "class7": SNEAKER}
    for kind, label in kinds.items():
        write_pngs(tmp_path / "sandal" / "test" / kind, f.test_images[f.test_labels == label])
    loaded = data.load_folder(str(tmp_path / "sandal"))
    assert loaded.class_names == ("good", "class0", "class7", "class9")  # Test labels 0-3.
    folder = data.one_class_split(loaded, normal_class=0)
    idx = data.one_class_split(f, normal_class=SANDAL)
    assert folder.fingerprint == idx.fingerprint
    np.testing.assert_array_equal(folder.train_images, idx.train_images)
    np.testing.assert_array_equal(folder.val_images, idx.val_images)
    # The folder's test images come kind by kind: good/ first, then by name (class0, class7,
    # class9).
    order = np.concatenate([np.flatnonzero(f.test_labels == kinds[k])
                            for k in ["good", *sorted(set(kinds) - {"good"})]])  # fmt: skip
    np.testing.assert_array_equal(folder.test_images, idx.test_images[order])
    np.testing.assert_array_equal(folder.test_labels, idx.test_labels[order])


def test_arrays_as_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    train = (rng.uniform(size=(64, 12, 10, 3)) * 255).astype(np.uint8)
    test = rng.uniform(size=(9, 12, 10, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", train_images=train, test_images=test,
             test_labels=[0, 0, 0, 1, 1, 2, 2, 2, 0], kinds=["scratch", "hole"])  # fmt: skip
    d = data.load_dataset(dataset="arrays", data_dir=str(tmp_path / "a.npz"))
    assert d.image_shape == (12, 10, 3) and d.class_names == ("normal", "scratch", "hole")
    np.testing.assert_array_equal(d.train_images, train)
    np.save(tmp_path / "b.npy", train[..., :1])  # Training images only, one channel.
    d = data.load_dataset(dataset="arrays", data_dir=str(tmp_path / "b.npy"))
    assert d.image_shape == (12, 10, 1) and d.test_images.shape == (0, 12, 10)
    np.save(tmp_path / "c.npy", rng.uniform(0, 255, size=(4, 8, 8)))  # Unscaled floats.
    with pytest.raises(data.DataError, match="floats in \\[0, 1\\]"):
        data.load_dataset(dataset="arrays", data_dir=str(tmp_path / "c.npy"))
    np.savez(tmp_path / "d.npz", train_images=train, test_images=test[:3], test_labels=[1, 1, 2])
    with pytest.raises(data.DataError, match="AUROC needs both"):
        data.load_dataset(dataset="arrays", data_dir=str(tmp_path / "d.npz"))


def _png(path, size=(28, 28), mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, 128).save(path)


def test_bad_folders_fail_with_one_message_naming_the_cause(tmp_path):
    def load(name, **options):
        return data.load_folder(str(tmp_path / name), **options)

    os.makedirs(tmp_path / "empty" / "train")
    with pytest.raises(data.DataError, match="empty/train holds no normal training images"):
        load("empty")
    for i in range(3):
        _png(tmp_path / "corrupt" / "train" / f"{i}.png")
    (tmp_path / "corrupt" / "train" / "1.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match="train/1.png: not a readable image"):
        load("corrupt")
    _png(tmp_path / "mixed" / "train" / "0.png")
    _png(tmp_path / "mixed" / "train" / "1.png", mode="RGB")
    with pytest.raises(data.DataError, match="0.png \\(L\\) has 1 channel.*1.png \\(RGB\\) has 3"):
        load("mixed")
    assert load("mixed", channels=3).train_images.shape == (2, 28, 28, 3)  # Converted.
    _png(tmp_path / "sizes" / "train" / "0.png")
    _png(tmp_path / "sizes" / "train" / "1.png", size=(30, 20))
    with pytest.raises(data.DataError, match="0.png is 28x28 but .*1.png is 30x20"):
        load("sizes")
    _png(tmp_path / "nogood" / "train" / "0.png")
    _png(tmp_path / "nogood" / "test" / "crack" / "0.png")
    with pytest.raises(data.DataError, match="normal images .*AUROC needs both"):
        load("nogood")
    _png(tmp_path / "tiny" / "train" / "0.png", size=(1, 1))
    with pytest.raises(data.DataError, match="0.png is 1x1: .*at least 2x2"):
        load("tiny")
    # 10,000 x 10,000: refused as it is (its header says so, nothing decoded) ...
    _png(tmp_path / "huge" / "train" / "0.png", size=(10_000, 10_000))
    with pytest.raises(data.DataError, match="10000x10000 .*too large.*--image_size"):
        load("huge")
    # ... and downscaled when asked.
    assert load("huge", size=(28, 28)).train_images.shape == (1, 28, 28)
    # One training image: nothing to hold out for the threshold.
    _png(tmp_path / "one" / "train" / "0.png")
    with pytest.raises(rules.InvalidArgument, match="1 training image.*at least 2"):
        data.split_indices(load("one"))


def test_folder_flags_are_checked_before_any_data(tmp_path):
    os.makedirs(tmp_path / "f" / "train")
    ok = dict(dataset="folder", data_dir=str(tmp_path / "f"))
    for settings, match in (
        ({"dataset": "folder"}, "needs --data_dir"),
        ({**ok, "architecture": "conv", "hidden_dims": (8, 8, 8), "image_size": (4, 4)},
         "--hidden_dims: architecture conv halves 4x4"),
        ({**ok, "image_size": (4,)}, "--image_size must be H,W"),
        ({**ok, "channels": 2}, "--channels must be 1"),
        ({"channels": 1}, "--channels and --image_size convert the images of --dataset=folder"),
        ({**ok, "normal_class": 3}, "--normal_class"),
    ):
        with pytest.raises(ConfigError, match=match):
            validate(ExperimentConfig(**settings))


def test_a_bad_folder_is_one_line_and_leaves_nothing(tmp_path):
    os.makedirs(tmp_path / "f" / "train")
    line = one_line_error(cli("main", "--dataset=folder", f"--data_dir={tmp_path / 'f'}",
                              f"--output_dir={tmp_path / 'out'}"))  # fmt: skip
    assert "holds no normal training images" in line and not (tmp_path / "out").exists()


def test_the_smoothing_bound_scales_with_the_image(tmp_path):
    # 10 pixels on 28x28 images; 20 on 56x56 (a folder's size known from --image_size).
    folder = dict(dataset="folder", data_dir=str(tmp_path))
    validate(ExperimentConfig(**folder, image_size=(56, 60), score_smoothing=20.0))
    with pytest.raises(ConfigError, match="--score_smoothing must be in \\[0, 10\\] pixels"):
        validate(ExperimentConfig(score_smoothing=12.0))
    with pytest.raises(ConfigError, match="--score_smoothing must be in \\[0, 20\\]"):
        validate(ExperimentConfig(**folder, image_size=(56, 60), score_smoothing=21.0))


def test_a_small_folder_trains_with_no_flags_and_says_how(tmp_path, caplog):
    """30 training images: the batch adapts (one info line) and the 3 held-out normals are
    called too few for a firm threshold (one warning)."""
    import logging  # noqa: PLC0415

    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "small" / "train", rng.integers(0, 256, (30, 8, 8), np.uint8))
    caplog.set_level(logging.INFO, logger="absl")
    result = run_single(ExperimentConfig(dataset="folder", data_dir=str(tmp_path / "small"),
                                         output_dir=str(tmp_path / "run"), epochs=1,
                                         checkpoint_every=0, **SIZES))  # fmt: skip
    assert result["config"]["batch_size"] == 27  # min(128, the 27 training images).
    lines = [r.getMessage() for r in caplog.records]
    assert sum("batch size 27" in line for line in lines) == 1, lines
    assert sum("only 3 held-out normal image(s)" in line for line in lines) == 1, lines
    d = detector.Detector("ae", epochs=1, **SIZES)  # The library says the same.
    caplog.clear()
    d.fit(jax.random.key(0), rng.integers(0, 256, (30, 8, 8), np.uint8))
    assert any("only 3 held-out" in r.getMessage() for r in caplog.records)
