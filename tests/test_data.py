"""Data loading (bundled, idx, tfds) and the one-class split."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import fashion_mnist_dir

from jax_vae import data, vocab


def test_bundled_shapes_and_dtypes(mnist):
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_labels.shape == (10000,)
    for a in mnist[:4]:
        assert a.dtype == np.uint8
    assert set(np.unique(mnist.train_labels)) == set(range(10))


def test_split_counts_digit0(split0):
    # 5923 training zeros; 10% (592) held out for the threshold.
    assert split0.train_images.shape == (5923 - 592, 784)
    assert split0.val_images.shape == (592, 784)
    assert split0.test_images.shape == (10000, 784)
    assert int((split0.test_labels == 0).sum()) == 980
    assert int(split0.test_labels.sum()) == 9020
    np.testing.assert_array_equal(split0.test_labels, (split0.test_classes != 0).astype(np.int32))


def test_split_dtypes_and_range(split0):
    for images in (split0.train_images, split0.val_images, split0.test_images):
        assert images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
    assert split0.test_labels.dtype == np.int32
    assert split0.test_classes.dtype == np.int32


def test_split_is_seeded_and_disjoint(mnist):
    a = data.one_class_split(mnist, normal_class=3, seed=1)
    b = data.one_class_split(mnist, normal_class=3, seed=1)
    c = data.one_class_split(mnist, normal_class=3, seed=2)
    np.testing.assert_array_equal(a.val_images, b.val_images)
    assert not np.array_equal(a.val_images, c.val_images)
    # Train and validation images come from disjoint sets of normal images.
    train_rows = {r.tobytes() for r in a.train_images}
    assert not any(r.tobytes() in train_rows for r in a.val_images[:50])
    assert a.train_images.shape[0] + a.val_images.shape[0] == int((mnist.train_labels == 3).sum())


def test_anomaly_fraction_sampling(mnist):
    s = data.one_class_split(mnist, normal_class=0, anomaly_fraction=0.1, seed=0)
    n_normal = int((s.test_labels == 0).sum())
    assert n_normal == 980
    assert int(s.test_labels.sum()) == round(980 * 0.1 / 0.9)  # 109
    assert set(np.unique(s.test_classes[s.test_labels == 1])) <= set(range(1, 10))
    with pytest.raises(ValueError, match="anomal"):
        data.one_class_split(mnist, normal_class=0, anomaly_fraction=0.99)


@pytest.mark.parametrize(
    "kwargs", [{"normal_class": 10}, {"val_fraction": 1.0}, {"anomaly_fraction": 0.0}]
)
def test_split_rejects_bad_arguments(mnist, kwargs):
    with pytest.raises(ValueError):
        data.one_class_split(mnist, **kwargs)


def _copy_bundled(tmp_path):
    for name in os.listdir(data.bundled_data_dir()):
        shutil.copy(os.path.join(data.bundled_data_dir(), name), tmp_path / name)
        os.chmod(tmp_path / name, 0o644)
    return tmp_path


def test_md5_detects_corrupted_copy(tmp_path):
    _copy_bundled(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[100] = (content[100] + 1) % 10  # Still a valid IDX file, one label changed.
    path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: MD5"):
        data.load_idx(str(tmp_path), verify_md5=True)
    # The same file passes the structural checks when MD5s are not asked for.
    data.load_idx(str(tmp_path), verify_md5=False)


def test_truncated_and_missing_files_name_the_file(tmp_path):
    _copy_bundled(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
        data.load_idx(str(tmp_path), verify_md5=True)
    os.remove(path)
    with pytest.raises(data.DataError, match="missing data file .*train-labels-idx1-ubyte"):
        data.load_idx(str(tmp_path))


def test_malformed_raw_idx_is_a_clear_error():
    with open(os.path.join(data.bundled_data_dir(), "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        raw = gzip.decompress(f.read())
    with pytest.raises(data.DataError, match="does not match its header"):
        data.parse_idx(raw[:-5], name="labels")
    with pytest.raises(data.DataError, match="bad magic"):
        data.parse_idx(b"\x00\x00\x0d\x01" + raw[4:], name="labels")


def test_idx_source_reads_raw_and_gz(tmp_path, mnist):
    _copy_bundled(tmp_path)
    # Decompress one file: the loader takes raw IDX files too.
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    loaded = data.load_dataset("idx", data_dir=str(tmp_path))
    np.testing.assert_array_equal(loaded.test_images, mnist.test_images)


def test_bundled_source_rejects_other_datasets():
    with pytest.raises(data.DataError, match="only has mnist"):
        data.load_dataset("bundled", dataset="fashion_mnist")


def test_bundled_load_does_not_import_tensorflow():
    code = (
        "import sys; from jax_vae import data; d = data.load_dataset('bundled'); "
        "print(d.train_images.shape, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(60000, 28, 28) False"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_source_with_mock_data(name, tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")  # tfds' mock data needs it: the tfds test extra.
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data makes download_and_prepare a no-op; pretend the network is up.
    monkeypatch.setattr(data.tfds, "_network_reachable", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=40):
        loaded = data.load_dataset("tfds", dataset=name, data_dir=str(tmp_path))
    assert loaded.train_images.shape == (40, 28, 28)
    assert loaded.test_images.shape == (40, 28, 28)
    assert loaded.train_images.dtype == np.uint8
    assert loaded.train_labels.max() <= 9
    common = int(np.bincount(loaded.train_labels).argmax())  # Mock labels are random.
    split = data.one_class_split(loaded, normal_class=common, val_fraction=0.5)
    assert split.train_images.shape[1] == 784


def test_tfds_offline_fails_fast_with_alternatives(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data.tfds, "_network_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(data.DataError, match="--data_source=bundled"):
        data.load_dataset("tfds", dataset="mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 60  # Seconds (tf import), not minutes of retries.


def test_synthetic_anomalies_are_local_seeded_corruptions(split0):
    images = split0.val_images[:40]
    corrupted = data.synthetic_anomalies(images, seed=3)
    assert corrupted.shape == images.shape and corrupted.dtype == np.float32
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    np.testing.assert_array_equal(corrupted, data.synthetic_anomalies(images, seed=3))
    assert not np.array_equal(corrupted, data.synthetic_anomalies(images, seed=4))
    changed = np.abs(corrupted - images) > 1e-6
    # Every image changes, in a stroke-sized region: strokes only add ink
    # (even rows), erasures only remove it (odd rows, at most a 9x9 patch).
    assert changed.any(axis=1).all()
    assert (corrupted[::2] >= images[::2]).all() and (corrupted[1::2] <= images[1::2]).all()
    assert changed[1::2].sum(axis=1).max() <= 81
    assert 5 <= changed[::2].sum(axis=1).min() and changed[::2].sum(axis=1).max() <= 120
    np.testing.assert_array_equal(images, split0.val_images[:40])  # The input is untouched.


FASHION = fashion_mnist_dir()
needs_fashion = pytest.mark.skipif(
    FASHION is None, reason="no Fashion-MNIST files ($JAX_VAE_DATA, Debian's, ../shared)"
)


@needs_fashion
def test_fashion_mnist_real_files_found_through_the_environment(monkeypatch, tmp_path):
    os.symlink(FASHION, tmp_path / "fashion_mnist")  # $JAX_VAE_DATA/fashion_mnist/
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.find_dataset("fashion_mnist") == ("idx", str(tmp_path / "fashion_mnist"))
    assert fashion_mnist_dir() == str(tmp_path / "fashion_mnist")  # The tests look there too.
    d = data.load_dataset(dataset="fashion_mnist")  # auto: the environment's folder.
    assert d.train_images.shape == (60000, 28, 28) and d.test_images.shape == (10000, 28, 28)
    assert np.bincount(d.train_labels).tolist() == [6000] * 10
    assert np.bincount(d.test_labels).tolist() == [1000] * 10
    assert abs(d.train_images.mean() - 72.94) < 0.01  # 0.2860 of 255, as its README says.
    # Not MNIST: the same split code gives other images.
    split = data.one_class_split(d, normal_class=5)
    assert split.train_images.shape == (5400, 784)
    assert split.fingerprint != data.one_class_split(data.load_dataset("bundled"),
                                                     normal_class=5).fingerprint  # fmt: skip


@needs_fashion
def test_fashion_mnist_md5_catches_corrupt_and_foreign_files(tmp_path):
    for name in os.listdir(FASHION):
        if name.endswith(".gz"):
            shutil.copy(os.path.join(FASHION, name), tmp_path / name)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-1] + b"\x03"))
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz: MD5 .* fashion_mnist"):
        data.load_dataset("idx", dataset="fashion_mnist", data_dir=str(tmp_path))
    # MNIST's files are no Fashion-MNIST.
    with pytest.raises(data.DataError, match="official fashion_mnist"):
        data.load_dataset("idx", dataset="fashion_mnist", data_dir=data.bundled_data_dir())


def test_no_copy_found_names_the_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nothing"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion_mnist", str(tmp_path / "debian"))
    with pytest.raises(data.DataError) as error:
        data.load_dataset(dataset="fashion_mnist")
    message = str(error.value)
    for way in ("--data_dir=DIR", "JAX_VAE_DATA=DIR", "apt-get install dataset-fashion-mnist",
                "--data_source=tfds"):  # fmt: skip
        assert way in message, way
    assert "\n" not in message
    # A synthetic IDX folder in the Debian location is found there.
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in os.listdir(data.bundled_data_dir()):
        shutil.copy(os.path.join(data.bundled_data_dir(), name), debian / name)
    assert data.find_dataset("fashion_mnist") == ("idx", str(debian))


def test_class_names_indices_and_folder_names():
    from jax_vae import rules  # noqa: PLC0415

    for text, index in (("Sandal", 5), ("sandal", 5), ("ankle boot", 9), ("Ankle_Boot", 9),
                        ("t-shirt", 0), ("T-shirt/top", 0), ("3", 3), (7, 7)):  # fmt: skip
        assert rules.class_index("--normal_class", text, "fashion_mnist") == index, text
    for bad in ("hat", "s", ""):  # Unknown, ambiguous (Sandal, Shirt, Sneaker), empty.
        with pytest.raises(ValueError, match="--normal_class must be a class index 0-9 or one"):
            rules.class_index("--normal_class", bad, "fashion_mnist")
    with pytest.raises(ValueError, match=r"--normal_class must be in \[0, 9\], got 10"):
        rules.class_index("--normal_class", "10", "fashion_mnist")
    assert vocab.class_label("fashion_mnist", 0) == "T-shirt/top"
    assert vocab.class_label("mnist", 3) == "digit 3"
    assert vocab.class_slug("fashion_mnist", 0) == "fashion_mnist-t-shirt-top"
    assert vocab.class_slug("mnist", 3) == "digit3"
