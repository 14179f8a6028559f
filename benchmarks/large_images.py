"""A folder of large photos, as a user with MVTec-style data has them: loading, memory, and
conv training at 128x128 beside the same network in PyTorch.

  python -m benchmarks.large_images                                   # 300 RGB 1024x1024 PNGs
  python -m benchmarks.large_images --torch_python=/path/to/python    # and PyTorch's epoch
  python -m benchmarks.large_images --torch_python=... --repeats=5    # alternately, 5 times each
  python -m benchmarks.large_images --reduced                         # 24 of 256x256 (tests)

Writes the photos into a temporary folder (``train/good/``), then runs
``experiments.main --dataset=folder --image_size=128,128 --architecture=conv
--hidden_dims=32,64 --models=ae`` on it in a fresh process and prints its images/s, seconds
per epoch, loading seconds and peak resident memory (the process's maximum RSS), beside what
the resized images and the model's training state take. With ``--torch_python`` (an
interpreter with PyTorch, e.g. ``pip install torch``), the same conv AE trains in PyTorch on
as many 128x128 RGB images, batch 128, in its own process: its seconds per epoch and peak
RSS are printed beside. Writes one JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks import common
from experiments import cli

flags.adopt_module_key_flags(common)
flags.DEFINE_string("torch_python", None, "A Python interpreter with PyTorch: its epoch of "
                    "the same network is printed beside (none: JAX only).")  # fmt: skip
flags.DEFINE_integer("photos", 300, "Photos in the folder (--reduced: 24).")
flags.DEFINE_integer("repeats", 1, "Runs of JAX and PyTorch, alternately; each framework's run "
                     "with the median seconds per epoch is reported, and every run's ratio.")
FLAGS = flags.FLAGS

SIZE, CHANNELS, EPOCHS = 128, 3, 4
TORCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_profile_torch.py")


def write_photos(folder: str, n: int, side: int) -> None:
    """``n`` smooth RGB textures with fine noise, ``side`` x ``side`` PNGs, as photos of a
    surface are (they compress as poorly)."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(60, 200, (16, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC), np.int16)
        noisy = smooth + rng.integers(-12, 13, (side, side, 3), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:04d}.png"), compress_level=1)  # fmt: skip


def _run(argv: list[str]) -> tuple[str, float]:
    """Runs ``argv`` to the end in its own process: its stdout and peak RSS (MB)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()  # Both small; read to the end.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {err.strip()[-800:]}")
    return out, usage.ru_maxrss / 1024


def measure(*, reduced: bool = False) -> dict:
    from jax_vae import registry  # noqa: PLC0415

    photos, side = (24, 256) if reduced else (FLAGS.photos, 1024)
    epochs = 1 if reduced else EPOCHS
    record: dict = {"photos": photos, "side": side, "image_size": [SIZE, SIZE, CHANNELS],
                    "epochs": epochs, "environment": common.environment()}  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        write_photos(os.path.join(root, "parts", "train", "good"), photos, side)
        record["write_seconds"] = time.perf_counter() - t
        run = os.path.join(root, "run")
        argv = [sys.executable, "-m", "experiments.main", "--dataset=folder",
                f"--data_dir={os.path.join(root, 'parts')}", f"--image_size={SIZE},{SIZE}",
                "--architecture=conv", "--hidden_dims=32,64", "--models=ae",
                f"--epochs={epochs}", "--checkpoint_every=0", "--notensorboard",
                "--compilation_cache=", f"--output_dir={run}", "--verbosity=-1"]  # fmt: skip
        runs, torch_runs = [], []
        for repeat in range(max(FLAGS.repeats, 1)):  # Alternately: the machine's load drifts.
            folder = f"{run}{repeat}"
            _, rss = _run([*argv[:-2], f"--output_dir={folder}", argv[-1]])
            with open(os.path.join(folder, "metrics.json")) as f:
                runs.append((json.load(f), rss))
            if FLAGS.torch_python:
                n = runs[-1][0]["config"]["splits"]["0"]["train"]
                out, torch_rss = _run([FLAGS.torch_python, TORCH, f"--size={SIZE}",
                                       f"--channels={CHANNELS}", f"--images={n}",
                                       f"--epochs={max(epochs, 2)}"])  # fmt: skip
                torch_runs.append({**json.loads(out.strip().splitlines()[-1]),
                                   "peak_rss_mb": torch_rss})  # fmt: skip
    seconds = [m["models"]["ae"]["train_seconds"] for m, _ in runs]
    metrics, rss = runs[int(np.argsort(seconds)[len(seconds) // 2])]  # The median run.
    ae = metrics["models"]["ae"]
    train_images = metrics["config"]["splits"]["0"]["train"]
    model = registry.build("ae", hidden_dims=(32, 64), architecture="conv",
                           image_shape=(SIZE, SIZE, CHANNELS))  # fmt: skip
    params = _count_params(model)
    record["jax"] = {
        "train_images": train_images, "peak_rss_mb": rss,
        "load_seconds": metrics["timings"]["data"],
        "seconds_per_epoch": ae["train_seconds"] / epochs,
        "images_per_second": ae["images_per_second"],
        "compile_seconds": ae["compile_seconds"],
        "resized_images_mb": photos * SIZE * SIZE * CHANNELS / 2**20,  # uint8, as held.
        "training_state_mb": params * 4 * 4 / 2**20,  # Params, gradients, Adam's moments.
        "microbatches": ae.get("microbatches"),
    }  # fmt: skip
    if torch_runs:
        torch_seconds = [t["seconds_per_epoch"] for t in torch_runs]
        record["torch"] = torch_runs[int(np.argsort(torch_seconds)[len(torch_seconds) // 2])]
        record["ratios"] = [s / epochs / t for s, t in zip(seconds, torch_seconds, strict=True)]
    _print(record)
    return record


def _count_params(model) -> int:
    import jax  # noqa: PLC0415

    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((SIZE * SIZE * CHANNELS,), np.float32))
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


def _print(record: dict) -> None:
    j = record["jax"]
    lines = [
        f"{record['photos']} RGB photos of {record['side']}x{record['side']} (written in "
        f"{record['write_seconds']:.1f} s), read at {SIZE}x{SIZE}: {j['train_images']} training "
        f"images, {record['epochs']} epoch(s) of the conv AE (32, 64 channels)",
        f"{'':<8}{'images/s':>10}{'s/epoch':>10}{'load s':>9}{'peak RSS MB':>13}",
        f"{'JAX':<8}{j['images_per_second']:>10.0f}{j['seconds_per_epoch']:>10.2f}"
        f"{j['load_seconds']:>9.2f}{j['peak_rss_mb']:>13.0f}",
    ]  # fmt: skip
    if "torch" in record:
        t = record["torch"]
        lines.append(f"{'PyTorch':<8}{t['images_per_second']:>10.0f}"
                     f"{t['seconds_per_epoch']:>10.2f}{'-':>9}{t['peak_rss_mb']:>13.0f}")
        ratios = record["ratios"]
        each = ", ".join(f"{r:.2f}" for r in ratios)
        lines.append(f"JAX / PyTorch seconds per epoch: {np.median(ratios):.2f}"
                     + (f" (the median of {len(ratios)} runs: {each})" if len(ratios) > 1 else ""))
    lines.append(f"resized images {j['resized_images_mb']:.0f} MB, training state "
                 f"{j['training_state_mb']:.0f} MB")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.command(common.suite_body("large_images", measure))
