"""How fast image files load: ``data.read_images`` on a folder of small PNGs, and on large ones.

  python -m benchmarks.images                 # 60,000 MNIST digits as 28x28 PNGs; 1,000 large
  python -m benchmarks.images --reduced       # 2,000 and 100 (the test suite runs it)

Writes the digits into a temporary folder, then times reading the folder back (decoding,
checking sizes, stacking) and prints images/s and the process's peak memory. Then the same for
digits upscaled to 256x256 RGB, which decode in parallel threads, against one thread (the
ratio, measured in one run); writes one JSON.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from unittest import mock

from absl import flags

from benchmarks import common
from experiments import cli

flags.adopt_module_key_flags(common)


def images(*, reduced: bool = False) -> dict:
    """Images/s of ``data.read_images`` over a folder of 28x28 grayscale PNGs."""
    from PIL import Image  # noqa: PLC0415

    from jax_vae import data  # noqa: PLC0415

    n = 2000 if reduced else 60000
    digits = data.load_dataset("bundled").train_images[:n]
    with tempfile.TemporaryDirectory() as folder:
        for i, digit in enumerate(digits):
            Image.fromarray(digit).save(os.path.join(folder, f"{i:05d}.png"))
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        t = time.perf_counter()
        names, loaded = data.read_images(folder)
        seconds = time.perf_counter() - t
    assert len(names) == n and (loaded == digits).all()  # Every file, decoded exactly.
    record = {"suite": "images", "reduced": reduced, **common.environment(), "images": n,
              "bytes_on_disk": size, "seconds": seconds, "images_per_second": n / seconds,
              "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    sys.stdout.write(f"{n:,} PNGs of 28x28 ({size / 2**20:.1f} MB on disk) read in "
                     f"{seconds:.2f} s: {n / seconds:,.0f} images/s; peak memory "
                     f"{record['host_peak_rss_mb']:.0f} MB\n")  # fmt: skip
    large = 100 if reduced else 1000
    with tempfile.TemporaryDirectory() as folder:
        for i, digit in enumerate(digits[:large]):
            Image.fromarray(digit).resize((256, 256)).convert("RGB").save(
                os.path.join(folder, f"{i:05d}.png"))  # fmt: skip
        rates = {}
        for how, threshold in (("threads", data.PARALLEL_MIN_PIXELS), ("one thread", 2**62)):
            with mock.patch.object(data, "PARALLEL_MIN_PIXELS", threshold):
                t = time.perf_counter()
                data.read_images(folder)
                rates[how] = large / (time.perf_counter() - t)
    record["large_256x256_rgb"] = {"images": large, "images_per_second": rates}
    sys.stdout.write(f"{large:,} PNGs of 256x256 RGB: {rates['threads']:,.0f} images/s in "
                     f"threads, {rates['one thread']:,.0f} in one thread "
                     f"({rates['threads'] / rates['one thread']:.2f}x)\n")  # fmt: skip
    return record


body = common.suite_body("images", images)


if __name__ == "__main__":
    cli.command(body)
