"""Every image file read right: each Pillow mode by its real range, EXIF orientation, alpha,
nested folders, skipped files counted. Files written by the tests, checked against NumPy."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jax_vae import data

RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 65536, size=(12, 10), dtype=np.uint16)  # Taller than wide.


def _png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of [H, W, C] uint16 pixels (Pillow writes 16 bits for gray only)."""
    height, width, channels = pixels.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(tag, body):
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))  # fmt: skip

    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip


def _floats(path, **kwargs) -> np.ndarray:
    images = data.decode_images([str(path)], **kwargs)
    return images[0].astype(np.float64) / (255 if images.dtype == np.uint8 else 1)


def test_sixteen_bit_gray_is_value_over_65535_not_saturated(tmp_path):
    Image.fromarray(PICTURE).save(tmp_path / "g16.png")  # Pillow: mode I;16.
    Image.fromarray((PICTURE >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    wide = _floats(tmp_path / "g16.png")
    np.testing.assert_allclose(wide, PICTURE / 65535, rtol=1e-6)
    # The same picture in 8 bits reads as the same image, to 8 bits' precision.
    np.testing.assert_allclose(_floats(tmp_path / "g8.png"), wide, atol=1 / 255 + 1e-6)
    # In a folder with 8-bit files, everything is floats in [0, 1], each by its own range.
    mixed = data.decode_images([str(tmp_path / "g16.png"), str(tmp_path / "g8.png")])
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed[1], (PICTURE >> 8) / 255, rtol=1e-6)


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_with_and_without_alpha(tmp_path, channels):
    pixels = RNG.integers(0, 65536, size=(6, 5, channels), dtype=np.uint16)
    _png16(tmp_path / "c.png", pixels)
    got = _floats(tmp_path / "c.png")
    assert got.shape == (6, 5, 3)  # Alpha dropped.
    np.testing.assert_allclose(got, pixels[..., :3] / 65535, atol=1 / 255)


def test_float_tiff_one_bit_palette_and_rgba(tmp_path):
    floats = RNG.random((7, 9)).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    np.testing.assert_allclose(_floats(tmp_path / "f.tif"), floats, rtol=1e-6)
    Image.fromarray(floats * 3).save(tmp_path / "big.tif")
    with pytest.raises(data.DataError, match=r"big.tif \(F \(float\)\): values .* outside"):
        data.decode_images([str(tmp_path / "big.tif")])
    bits = RNG.random((7, 9)) > 0.5
    Image.fromarray(bits).save(tmp_path / "b.png")  # Mode 1.
    np.testing.assert_array_equal(_floats(tmp_path / "b.png"), bits.astype(float))
    rgb = RNG.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, RNG.integers(0, 256, size=(7, 9, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(data.decode_images([str(tmp_path / "a.png")])[0], rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(data.decode_images([str(tmp_path / "p.png")])[0],
                                  np.asarray(palette.convert("RGB")))  # fmt: skip
    # Gray to colour and back as the flags ask: Pillow's own conversions.
    np.testing.assert_array_equal(
        data.decode_images([str(tmp_path / "a.png")], channels=1)[0],
        np.asarray(Image.fromarray(rgb).convert("L")))  # fmt: skip


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((12, 8, 3), np.uint8)
    upright[:4] = 255  # A white top band.
    stored = np.rot90(upright, k=1)  # Sideways, as a camera held on its side stores it.
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise to show.
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    got = data.decode_images([str(tmp_path / "phone.jpg")])[0]
    assert got.shape == (12, 8, 3)
    assert got[:4].mean() > 200 and got[4:].mean() < 50  # Read upright: the band on top.


def test_nested_folders_are_read_and_skipped_files_counted(tmp_path, caplog):
    root = tmp_path / "parts"
    for folder in ("train", "train/good", "train/good/batch2", "test/good", "test/scratch/a"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    files = ["train/0.png", "train/good/1.png", "train/good/batch2/2.png", "test/good/3.png",
             "test/good/4.png", "test/scratch/a/5.png", "test/scratch/6.png"]  # fmt: skip
    for i, name in enumerate(files):
        Image.fromarray(pixels[i]).save(root / name)
    (root / "train" / "notes.txt").write_text("x")
    (root / "train" / ".hidden.png").write_bytes(b"")
    (root / "train" / ".cache").mkdir()
    Image.fromarray(pixels[7]).save(root / "test" / "stray.png")  # In no kind's folder.
    caplog.set_level(logging.INFO, logger="absl")
    dataset = data.load_folder(str(root))
    np.testing.assert_array_equal(dataset.train_images, pixels[:3])  # Every depth, in order.
    np.testing.assert_array_equal(dataset.test_images, pixels[[3, 4, 6, 5]])  # Then subfolders.
    assert dataset.class_names == ("good", "scratch")
    np.testing.assert_array_equal(dataset.test_labels, [0, 0, 1, 1])
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 4 file(s)" in skipped[0], skipped
    # Scoring a folder: the same rules, each file named by its path in the folder.
    names, images = data.read_images(str(root / "test"))
    assert names == ["stray.png", "good/3.png", "good/4.png", "scratch/6.png", "scratch/a/5.png"]
    np.testing.assert_array_equal(images, pixels[[7, 3, 4, 6, 5]])


def test_a_long_load_says_how_far_it_is(tmp_path, caplog, monkeypatch):
    from jax_vae.data import images as images_module  # noqa: PLC0415

    for i in range(130):  # Three chunks of at most 64 files.
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / f"{i:03d}.png")
    monkeypatch.setattr(images_module, "PROGRESS_SECONDS", -1.0)  # Every chunk is "long".
    caplog.set_level(logging.INFO, logger="absl")
    got = data.decode_images(sorted(str(p) for p in tmp_path.glob("*.png")))
    np.testing.assert_array_equal(got[:, 0, 0], np.arange(130))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoded")]
    assert [line.split(" images/s")[0].split(" (")[0] for line in lines] == [
        "decoded 64 of 130 images", "decoded 128 of 130 images", "decoded 130 of 130 images"]
