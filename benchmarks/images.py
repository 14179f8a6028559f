"""How fast image files load: ``data.read_images`` on a folder of small PNGs.

  python -m benchmarks.images                 # 60,000 MNIST digits as 28x28 PNGs
  python -m benchmarks.images --reduced       # 2,000 (the test suite runs it)

Writes the digits into a temporary folder, then times reading the folder back (decoding,
checking sizes, stacking) and prints images/s and the process's peak memory; writes one JSON.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

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
    return record


body = common.suite_body("images", images)


if __name__ == "__main__":
    cli.command(body)
