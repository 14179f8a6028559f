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

from jax_vae import data


def test_bundled_shapes_and_dtypes(mnist):
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_labels.shape == (10000,)
    for a in mnist:
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
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data makes download_and_prepare a no-op; pretend the network is up.
    monkeypatch.setattr(data, "_network_reachable", lambda timeout=3.0: True)
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
    monkeypatch.setattr(data, "_network_reachable", lambda timeout=3.0: False)
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
