"""The accelerator suite: one command measures what a GPU or TPU user asks about.

  python -m benchmarks.accelerator                 # runs/<time>_benchmark_accelerator.json
  python -m benchmarks.accelerator --reduced       # a smoke test (the test suite runs it)

On whatever backend JAX finds: each model's 30 epochs after compile and its
images/s; K = 1, 16, 64, 256 vmapped VAEs against one VAE and against K single
trainings; scoring throughput over the test set; the whole one-class benchmark
grid as one timed sweep through the pipeline, with the number of XLA programs it
compiles; the peak device memory and host RSS, and the peak host RSS of a fresh
process training K = 1 and K = 64 VAEs (2 in reduced form). Prints one table,
checks the targets at full size, writes one JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks import common
from experiments import cli
from experiments.config import ExperimentConfig, SweepConfig
from jax_vae import keys, scoring
from jax_vae.data import load_dataset, one_class_split
from jax_vae.registry import build as make_model
from jax_vae.train import train

flags.adopt_module_key_flags(common)

ACCELERATOR_TARGETS = {  # The goals of the accelerator suite on one GPU (full size only).
    "one model, 30 epochs after compile (s)": 0.5,
    "16 vmapped VAEs / one VAE": 2.0,
    "benchmark grid (s)": 120.0,
}


def _peak_memory() -> dict:
    """Peak memory of device 0 (where the backend reports it) and of this process (host)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {"device_peak_bytes": stats.get("peak_bytes_in_use"),
            "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# JAX's monitoring events: an XLA compilation, and a program loaded from the persistent cache.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[tuple[str, str]]]:
    """Collects one ``(function name, how)`` per XLA program built, ``how`` being
    ``compiled`` or ``cached`` (loaded from the persistent compilation cache). Training
    epochs are named ``jit(train_epoch)`` (:func:`jax_vae.train.train`)."""
    built: list[tuple[str, str]] = []
    hit = [False]  # A cache hit is reported inside the build it ends.

    def compiled(event: str, seconds: float, fun_name: str = "", **_) -> None:
        if event == COMPILE_EVENT:
            built.append((fun_name, "cached" if hit[0] else "compiled"))
            hit[0] = False

    def cached(event: str, **_) -> None:
        if event == CACHE_HIT_EVENT:
            hit[0] = True

    jax.monitoring.register_event_duration_secs_listener(compiled)
    jax.monitoring.register_event_listener(cached)
    try:
        yield built
    finally:
        jax.monitoring.unregister_event_duration_listener(compiled)
        jax.monitoring.unregister_event_listener(cached)


_TRAIN_K = """
import json, resource, sys, jax, numpy as np
from jax_vae import data, registry, train
k, epochs, small = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
split = data.one_class_split(data.load_dataset(), normal_class=0)
model = registry.build("vae", **{n: tuple(v) if isinstance(v, list) else v
                                 for n, v in small.items()})
train.train(jax.random.split(jax.random.key(0), k), split.train_images,
            {"beta": np.linspace(0.5, 2.0, k)}, model=model, epochs=epochs,
            hooks=(), group_size=0)  # All K vmapped together, as on an accelerator.
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def host_peak_mb(sizes: tuple[int, ...], epochs: int, small: dict | None = None
                 ) -> dict[int, float]:
    """Peak host RSS (MB) of a fresh process that trains K VAEs (of the ``small`` sizes, if
    given) together on digit 0, all vmapped at once (the accelerator's layout). Before the
    batches were gathered inside the scan step, each model built a permuted copy of the
    training set every epoch: on the CPU, K = 64 peaked at 3,210 MB instead of 1,375 MB
    (K = 1: 649 and 622 MB). One process per K, all at once (each measures only itself)."""
    # Sharing one accelerator: neither process may take most of its memory up front.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    args = (str(epochs), json.dumps(small or {}))
    procs = {k: subprocess.Popen([sys.executable, "-c", _TRAIN_K, str(k), *args], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in sizes}  # fmt: skip
    peaks = {}
    for k, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"training {k} VAEs failed: {err.strip().splitlines()[-1:]}")
        peaks[k] = float(out.split()[-1])
    return peaks


def accelerator(*, reduced: bool = False) -> dict:
    """Training, vmapped-VAE cost, scoring throughput and the whole grid, timed.

    Full size: 30 epochs; K = 1, 16, 64, 256; the grid of AE and beta-VAE at
    beta 0.5/1/2, seeds 0-2, digits 0-9 (the AE has no beta: 30 AEs and 90
    VAEs). ``reduced``: 1 epoch, K = 1 and 2, and a grid of digits 0 and 1 (one seed and
    beta) with 10% anomalies, all of small models (32 hidden units, latent 4).
    """
    small = {"hidden_dims": (32,), "latent_dim": 4} if reduced else {}
    epochs = 1 if reduced else 30
    ep = f"{epochs} epoch{'s' * (epochs != 1)}"  # In the printed lines.
    sizes = (1, 2) if reduced else (1, 16, 64, 256)
    split = one_class_split(load_dataset(), normal_class=0)
    images = jax.device_put(split.train_images)
    n = images.shape[0]
    record = {"suite": "accelerator", "reduced": reduced, **common.environment()}
    out = sys.stdout
    out.write(f"{record['device']} ({record['backend']}), {len(record['devices'])} device(s); "
              f"{n} training images, {ep}{' (reduced)' if reduced else ''}\n\n")
    models, params = {}, {}
    for name in ("ae", "vae"):
        model = make_model(name, **small)
        r = train(keys.member_keys(0, name, 1).train[0], images, model=model, epochs=epochs,
                  hooks=())  # fmt: skip
        params[name] = (model, r.params)
        models[name] = {"train_seconds": r.train_seconds, "compile_seconds": r.compile_seconds,
                        "images_per_second": epochs * n / r.train_seconds}  # fmt: skip
        out.write(f"{name.upper():<4} {ep} {r.train_seconds:7.2f} s after a "
                  f"{r.compile_seconds:.1f} s compile: {epochs * n / r.train_seconds:,.0f} img/s\n")
    record["models"] = models

    vmapped = []
    out.write(f"\n{'K VAEs':>7}{'seconds':>10}{'/ one':>8}{'/ K single':>11}\n")
    for k in sizes:
        if k == 1:
            seconds = models["vae"]["train_seconds"]
        else:
            r = train(jax.random.split(jax.random.key(1), k), images,
                      {"beta": jnp.linspace(0.5, 2.0, k)},
                      model=params["vae"][0], epochs=epochs, hooks=(), group_size=0)
            seconds = r.train_seconds
        one = models["vae"]["train_seconds"]
        vmapped.append({"k": k, "seconds": seconds, "per_one": seconds / one,
                        "per_k_singles": seconds / (k * one)})  # fmt: skip
        out.write(f"{k:>7}{seconds:>10.2f}{seconds / one:>8.2f}{seconds / (k * one):>11.3f}\n")
    record["vmapped_vaes"] = vmapped

    record["scoring"] = {}
    out.write("\nscoring the test set (mean score; after compile)\n")
    for name, (model, p) in params.items():
        score_fn = model.score()
        run = functools.partial(scoring.score, p, split.test_images, score_fn=score_fn)
        run()  # Compile.
        t = time.perf_counter()
        run()
        seconds = time.perf_counter() - t
        rate = len(split.test_images) / seconds
        record["scoring"][name] = {"seconds": seconds, "images_per_second": rate}
        out.write(f"{name.upper():<4} {len(split.test_images)} images in {seconds:.3f} s: "
                  f"{rate:,.0f} img/s\n")

    record["grid"] = time_grid(epochs=epochs, reduced=reduced)
    g = record["grid"]
    out.write(f"\nbenchmark grid: {g['models']} models ({g['grid']}), {ep}: "
              f"{g['seconds']:.1f} s (of which training {g['train_seconds']:.1f} s, compiling "
              f"{g['compile_seconds']:.1f} s); {g['compiles']} XLA programs compiled, "
              f"{g['cache_hits']} loaded from the compilation cache; training epoch programs: "
              f"{g['training_epochs_compiled'] + g['training_epochs_cached']} for "
              f"{len(g['classes'])} classes and {g['model_kinds']} model kinds (each class "
              "padded to one size)\n")
    peaks = host_peak_mb((1, 2) if reduced else (1, 64), 1, small)
    record["host_peak_mb_by_k"] = peaks
    out.write("peak host memory of a fresh process training K VAEs (1 epoch): " + ", ".join(
        f"K={k} {mb:.0f} MB" for k, mb in peaks.items()) + "\n")
    record["memory"] = _peak_memory()
    device_peak = record["memory"]["device_peak_bytes"]
    out.write(f"peak memory: device {device_peak / 2**30:.2f} GiB, " if device_peak else
              "peak memory: device not reported by this backend, ")  # fmt: skip
    out.write(f"host {record['memory']['host_peak_rss_mb']:.0f} MB\n")

    measured = {
        "one model, 30 epochs after compile (s)": max(m["train_seconds"] for m in models.values()),
        "16 vmapped VAEs / one VAE": next((v["per_one"] for v in vmapped if v["k"] == 16), None),
        "benchmark grid (s)": g["seconds"],
    }
    record["targets"] = {}
    if not reduced:
        out.write("\ntargets\n")
        for label, target in ACCELERATOR_TARGETS.items():
            value = measured[label]
            record["targets"][label] = {"target": target, "measured": value,
                                        "met": value is not None and value <= target}
            out.write(f"  {label:<40} {value:8.2f}  (target {target:g}: "
                      f"{'met' if value <= target else 'missed'})\n")
    return record


def time_grid(*, epochs: int, reduced: bool) -> dict:
    """The one-class benchmark grid as one sweep, through the pipeline, in a temporary folder."""
    from experiments import pipeline  # noqa: PLC0415  (scikit-learn, Orbax: only here)

    with tempfile.TemporaryDirectory() as tmp:
        base = ExperimentConfig(epochs=epochs, output_dir=os.path.join(tmp, "grid"))
        grid = SweepConfig(betas=(0.5, 1.0, 2.0), seeds=(0, 1, 2), base=base)
        if reduced:
            small = dataclasses.replace(base, hidden_dims=(32,), latent_dim=4,
                                        anomaly_fraction=0.1)  # fmt: skip
            grid = SweepConfig(betas=(1.0,), seeds=(0,), classes=(0, 1), base=small)
        # As in a fresh process: the grid's programs, not ones an earlier call compiled
        # (equal models share their programs in memory).
        jax.clear_caches()
        t = time.perf_counter()
        with counting_compiles() as compiles:
            result = pipeline.run(grid, kind="sweep")
        seconds = time.perf_counter() - t
    phases = result.timings.phases
    return {
        "grid": f"betas {list(grid.betas)}, seeds {list(grid.seeds)}, classes "
                f"{list(grid.classes)}", "models": len({(r['model'], r['beta'], r['seed'],
                r['normal_class']) for r in result.rows}), "seconds": seconds,
        "train_seconds": phases.get("train", 0.0), "compile_seconds": phases.get("compile", 0.0),
        "phases": phases, "classes": list(grid.classes), "model_kinds": len(base.models),
        "compiles": sum(how == "compiled" for _, how in compiles),
        "cache_hits": sum(how == "cached" for _, how in compiles),
        # One program per model kind serves every class (padded), built once: compiled, or
        # loaded from a persistent cache (off here unless --compilation_cache is given).
        "training_epochs_compiled": compiles.count(("jit(train_epoch)", "compiled")),
        "training_epochs_cached": compiles.count(("jit(train_epoch)", "cached")),
        "mean_auroc": {m: float(np.mean([r["auroc"] for r in result.rows if r["model"] == m]))
                       for m in ("ae", "vae")},
    }  # fmt: skip


body = common.suite_body("accelerator", accelerator)


if __name__ == "__main__":
    cli.command(body)
