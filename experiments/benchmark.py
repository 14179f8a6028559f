"""Benchmarks: training throughput, time to result, and the accelerator suite.

  python -m experiments.benchmark                 # throughput: default model, digit 0
  python -m experiments.benchmark --sweep_sizes=1,4,16 --epochs=3
  python -m experiments.benchmark --profile       # also: time in matmuls (CPU)
  python -m experiments.benchmark --suite=time_to_result   # the default run, cold and warm
  python -m experiments.benchmark --suite=accelerator      # on whatever backend JAX finds

``--suite=throughput`` (the default) prints, per model: FLOPs per training
image (from XLA's cost analysis of one compiled training step), compile time,
images/s, achieved GFLOP/s, the peak of a large float32 matmul on the same
device, their ratio, and the 30-epoch time against its FLOP floor (FLOPs /
peak). Then the cost of training K models as one vmapped program relative to
K single trainings. With ``--profile`` (CPU backend), a ``jax.profiler``
trace of a few epochs splits an epoch into the time spent in the matmuls
(dots and fusions that contain one) and the rest.

``--suite=time_to_result`` runs ``experiments.main --beta=2`` twice in fresh
processes with an empty compilation cache (cold, then warm) and prints where
each run's wall time went, phase by phase (:mod:`experiments.timing`).

``--suite=accelerator`` measures one model's training, K = 1..256 vmapped
VAEs, scoring throughput, the whole one-class benchmark grid as one timed
sweep and the peak device memory, and writes them to one JSON. ``--reduced``
shrinks every part to a smoke test (the test suite runs it on the CPU).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli
from experiments.config import ConfigError, ExperimentConfig, SweepConfig, parse_int_list
from experiments.files import new_run_dir, write_json
from jax_vae import keys, rules, scoring
from jax_vae.data import load_dataset, one_class_split
from jax_vae.models import make_model
from jax_vae.train import default_group_size, init_state, make_epoch_fn, train

flags.DEFINE_list("models", ["ae", "vae"], "Models to benchmark.")
flags.DEFINE_integer("normal_class", 0, "Digit whose training images are used.")
flags.DEFINE_integer("epochs", 5, "Timed epochs per measurement (after compilation).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("sweep_sizes", "1,4,16", "K values for the K-model sweep cost; empty: skip.")
flags.DEFINE_integer("matmul_size", 0, "Side of the peak-matmul probe; 0 picks by backend.")
flags.DEFINE_bool("profile", False, "Profile epochs: time in matmuls vs the rest (CPU).")
flags.DEFINE_string("architecture", "mlp", "throughput: mlp or conv.")
flags.DEFINE_list("hidden_dims", ["400"], "throughput: hidden widths (conv: channels, e.g. 32,64).")
SUITES = ("throughput", "time_to_result", "accelerator")
flags.DEFINE_string("suite", "throughput", f"What to measure: {', '.join(SUITES)}.")
flags.DEFINE_bool("reduced", False, "time_to_result, accelerator: a small smoke-test version.")
flags.DEFINE_string("output", None, "accelerator, time_to_result: the JSON file to write "
                    "(default: runs/benchmark_<suite>_<time>.json).")  # fmt: skip
FLAGS = flags.FLAGS
# A training step cannot beat the device's large-matmul peak; a probe that says it does was
# disturbed (another process on the CPU, clocks changing), and its ratios mean nothing.
TRUST_MARGIN = 1.0


def matmul_peak_gflops(size: int, *, repeats: int = 10) -> float:
    """Measured float32 GFLOP/s of a ``size`` x ``size`` matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):  # Best of three batches of calls: the least disturbed.
        t = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / repeats)
    return 2 * size**3 / best / 1e9


def step_flops_per_image(model, images: jax.Array, batch_size: int) -> float:
    """FLOPs of one compiled training step (forward, backward, Adam), per image."""
    epoch_fn = make_epoch_fn(model=model, batch_size=batch_size, learning_rate=1e-3)
    state = init_state(jax.random.key(0), images[0], model=model, learning_rate=1e-3)
    # An epoch over exactly one batch: the scan body runs once.
    lowered = jax.jit(epoch_fn).lower(state, images[:batch_size], jnp.float32(1.0))
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) / batch_size


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\((?:.*calls=%?([\w.\-]+))?")


def matmul_instructions(hlo_text: str) -> set[str]:
    """Names of the instructions of a compiled HLO module that are or contain a dot."""
    has_dot: set[str] = set()
    calls: dict[str, tuple[str, str]] = {}  # instruction -> (its computation, called one)
    computation = ""
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            computation = _COMPUTATION.match(line).group(1)
        elif match := _INSTRUCTION.match(line):
            name, opcode, called = match.groups()
            if opcode in ("dot", "convolution"):
                has_dot.add(computation)
                calls[name] = (computation, computation)
            elif called:
                calls[name] = (computation, called)
    return {name for name, (_, called) in calls.items() if called in has_dot}


def profile_epoch(
    model, images: jax.Array, *, batch_size: int, epochs: int = 3
) -> tuple[float, float]:
    """(seconds per epoch, of which in matmuls) from a ``jax.profiler`` trace (CPU)."""
    epoch_fn = make_epoch_fn(model=model, batch_size=batch_size, learning_rate=1e-3)
    state = init_state(jax.random.key(0), images[0], model=model, learning_rate=1e-3)
    beta = jnp.float32(1.0)
    compiled = jax.jit(epoch_fn, donate_argnums=0).lower(state, images, beta).compile()
    matmuls = matmul_instructions(compiled.as_text())
    state, means = compiled(state, images, beta)
    jax.block_until_ready(means)
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            t = time.perf_counter()
            for _ in range(epochs):
                state, means = compiled(state, images, beta)
                jax.block_until_ready(means)
            seconds = (time.perf_counter() - t) / epochs
        traces = glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True)
        if not traces:
            raise RuntimeError("the profiler wrote no trace")
        with gzip.open(traces[0]) as f:
            events = json.load(f)["traceEvents"]
    per_op = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in matmuls:
            per_op[event["name"]] += event["dur"]
    return seconds, sum(per_op.values()) / 1e6 / epochs


def time_training(
    model, images, *, epochs: int, batch_size: int, k: int = 1, group_size: int | None = None
) -> tuple[float, float]:
    """(median seconds per epoch for all k models, compile seconds) of the training driver."""
    key = jax.random.key(0)
    if k > 1:
        key, beta = jax.random.split(key, k), jnp.linspace(0.5, 4.0, k)
    else:
        beta = 1.0
    seconds = []
    result = train(
        key, images, beta, model=model, epochs=epochs, batch_size=batch_size,
        hooks=(lambda e: seconds.append(e.seconds),), group_size=group_size,
    )  # fmt: skip
    return float(np.median(seconds)), result.compile_seconds


def writer_overhead(model, images, *, epochs: int, batch_size: int, repeats: int = 3):
    """(median epoch seconds with the TensorBoard hook, without it), runs interleaved."""
    from experiments.tensorboard import Board  # noqa: PLC0415

    timed: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(repeats):
            for writing in (False, True):
                board = Board(log_dir if writing else None)
                curves = board.epoch_hook([["m"]], members=1, images=images.shape[0],
                                          betas=[1.0], warmup=0)  # fmt: skip
                seconds = timed[writing]
                train(jax.random.key(0), images, model=model, epochs=epochs,
                      batch_size=batch_size, hooks=(curves, lambda e, s=seconds: s.append(
                          e.seconds)))  # fmt: skip
                board.close()
    return float(np.median(timed[True])), float(np.median(timed[False]))


def body():
    """Checks every flag before the (long) peak probe; returns the benchmark."""
    models = tuple(m.strip().lower() for m in FLAGS.models)
    sizes = parse_int_list(FLAGS.sweep_sizes, name="sweep_sizes") if FLAGS.sweep_sizes else ()
    try:
        rules.choice("--suite", FLAGS.suite, SUITES)
        rules.choice("--architecture", FLAGS.architecture, rules.ARCHITECTURES)
        try:
            dims = tuple(int(d) for d in FLAGS.hidden_dims)
        except ValueError:
            raise rules.InvalidArgument(
                f"--hidden_dims must be integers, got {','.join(FLAGS.hidden_dims)}"
            ) from None
        rules.widths("--hidden_dims", dims)
        if FLAGS.architecture == "conv":
            rules.conv_depth("--hidden_dims", dims)
        rules.choices("--models", models, rules.MODEL_NAMES)
        rules.normal_class("--normal_class", FLAGS.normal_class)
        rules.at_least("--epochs", FLAGS.epochs, 1)
        rules.at_least("--batch_size", FLAGS.batch_size, 1)
        rules.at_least("--matmul_size", FLAGS.matmul_size, 0, " (0 = by backend)")
        for k in sizes:
            rules.at_least("--sweep_sizes", k, 1)
    except rules.InvalidArgument as e:
        raise ConfigError(str(e)) from None
    if not FLAGS["compilation_cache"].present:
        FLAGS.compilation_cache = ""  # Compile times are measured: no cache unless asked.
    if FLAGS.suite == "throughput":
        build = functools.partial(make_model, hidden_dims=dims, architecture=FLAGS.architecture)
        return lambda _: benchmark(models, sizes, build=build)
    suite = {"time_to_result": time_to_result, "accelerator": accelerator}[FLAGS.suite]
    output = _output_path()
    return lambda _: _write(output, suite(reduced=FLAGS.reduced))


def _output_path() -> str:
    """``--output``, or a new file under runs/; its folder is made (and checked) now."""
    path = FLAGS.output or new_run_dir(f"benchmark_{FLAGS.suite}") + ".json"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output {path}: {folder} is not writable")
    return path


def _write(path: str, record: dict) -> None:
    write_json(path, record)
    sys.stdout.write(f"\nwrote {path}\n")


def benchmark(
    models: tuple[str, ...], sweep_sizes: tuple[int, ...], *, build: Callable = make_model
) -> None:
    """Prints the throughput table and the sweep cost (see the module docstring)."""
    backend = jax.default_backend()
    size = FLAGS.matmul_size or (4096 if backend == "cpu" else 8192)
    split = one_class_split(load_dataset(), normal_class=FLAGS.normal_class)
    images = jax.device_put(split.train_images)
    n = images.shape[0]
    if FLAGS.batch_size > n:
        raise ConfigError(f"--batch_size {FLAGS.batch_size} exceeds the {n} training images")
    peak = matmul_peak_gflops(size)
    out = sys.stdout
    out.write(
        f"device: {jax.devices()[0].device_kind} ({backend}), {len(jax.devices())} device(s)\n"
    )
    out.write(f"float32 matmul peak ({size}x{size}): {peak:.1f} GFLOP/s\n")
    out.write(f"training set: {n} images, batch {FLAGS.batch_size}\n\n")
    header = (
        f"{'model':<6}{'MFLOP/img':>10}{'compile s':>10}{'img/s':>10}{'GFLOP/s':>9}"
        f"{'of peak':>8}{'30 ep s':>9}{'floor s':>9}{'x floor':>8}\n"
    )
    out.write(header + "-" * (len(header) - 1) + "\n")
    untrusted = []
    for name in models:
        model = build(name)
        flops = step_flops_per_image(model, images, FLAGS.batch_size)
        epoch_s, compile_s = time_training(
            model, images, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size
        )
        rate = n / epoch_s
        gflops = rate * flops / 1e9
        floor = 30 * n * flops / (peak * 1e9)
        out.write(
            f"{name.upper():<6}{flops / 1e6:>10.2f}{compile_s:>10.2f}{rate:>10.0f}{gflops:>9.1f}"
            f"{gflops / peak:>8.2f}{30 * epoch_s:>9.2f}{floor:>9.2f}{30 * epoch_s / floor:>8.2f}\n"
        )
        if gflops / peak > TRUST_MARGIN:
            untrusted.append(name)
        if FLAGS.profile:
            if backend != "cpu":
                out.write("  (--profile splits CPU epochs only)\n")
                continue
            profiled_s, matmul_s = profile_epoch(model, images, batch_size=FLAGS.batch_size)
            epoch_floor = floor / 30
            out.write(
                f"  profiled epoch {profiled_s * 1e3:.1f} ms: matmuls {matmul_s * 1e3:.1f} ms "
                f"({matmul_s / epoch_floor:.2f}x the whole epoch's floor of "
                f"{epoch_floor * 1e3:.1f} ms), the rest {(profiled_s - matmul_s) * 1e3:.1f} ms\n"
            )

    if untrusted:
        logging.warning(
            "%s trained faster than the measured matmul peak (%.1f GFLOP/s): the probe was "
            "disturbed (is another process using the CPU?), so the 'of peak' and 'x floor' "
            "columns are not trustworthy; rerun on an idle machine", ", ".join(untrusted), peak,
        )  # fmt: skip
    with_writer, without = writer_overhead(build(models[-1]), images,
                                           epochs=FLAGS.epochs, batch_size=FLAGS.batch_size)
    out.write(f"\nTensorBoard writer ({models[-1].upper()}, median epoch): {without * 1e3:.1f} ms "
              f"without, {with_writer * 1e3:.1f} ms with ({with_writer / without:.3f}x)\n")
    if not sweep_sizes:  # --sweep_sizes= skips the sweep cost.
        return
    default_group = default_group_size()
    out.write(
        "\nK VAEs (betas 0.5..4) in one program vs K single trainings; vmapped in groups of "
        f"{default_group or 'K'} (the {backend} default) and all K at once\n"
    )
    header = (
        f"{'K':>4}{'K x single s':>14}{'grouped s':>11}{'ratio':>7}{'all-K s':>9}{'ratio':>7}\n"
    )
    out.write(header + "-" * (len(header) - 1) + "\n")
    model = build("vae")
    single, _ = time_training(model, images, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size)
    for k in sweep_sizes:
        timed = functools.partial(
            time_training, model, images, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, k=k
        )
        grouped, _ = timed(group_size=default_group)
        together, _ = timed(group_size=0)
        out.write(
            f"{k:>4}{k * single:>14.3f}{grouped:>11.3f}{grouped / (k * single):>7.2f}"
            f"{together:>9.3f}{together / (k * single):>7.2f}\n"
        )
    out.write("(seconds per epoch, median over timed epochs)\n")


# ------------------------------------------------------------------- time to result

# The phases of a run, in the order they happen (experiments.timing); "exit" is the
# wall time the run's own clock cannot see: process teardown after the last file.
PHASES = ("startup", "backend", "imports", "data", "compile", "train", "checkpoints",
          "scoring", "metrics", "baselines", "plots", "files", "tensorboard", "other")  # fmt: skip
TOTALS = (("wall", "wall_seconds", ".2f"), ("training", "train_seconds", ".2f"),
          ("wall/training", "ratio", ".2f"), ("peak RSS MB", "peak_rss_mb", ".0f"))  # fmt: skip
DEFAULT_RUN = ("--beta=2",)
REDUCED_RUN = ("--models=ae", "--epochs=1", "--hidden_dims=32", "--latent_dim=4")


def timed_run(args: tuple[str, ...], output_dir: str, cache: str) -> dict:
    """Runs ``experiments.main ARGS`` in a fresh process: wall time, peak RSS, its record."""
    argv = [sys.executable, "-m", "experiments.main", *args, f"--output_dir={output_dir}",
            f"--compilation_cache={cache}"]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # The child's own resource use.
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed:\n{log.read()[-2000:]}")
    with open(os.path.join(output_dir, "metrics.json")) as f:
        record = json.load(f)
    train_seconds = sum(m["train_seconds"] for m in record["models"].values())
    phases = record["timings"]
    return {
        "wall_seconds": wall, "train_seconds": train_seconds, "ratio": wall / train_seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes.
        "phases": {**phases, "exit": wall - phases["total"]},
        "metrics": {name: {"auroc": m["auroc"], "f1": m["f1"]}
                    for name, m in record["models"].items()},
    }  # fmt: skip


def time_to_result(*, reduced: bool = False) -> dict:
    """The default run twice, in fresh processes sharing an initially empty
    compilation cache: cold (compiles everything), then warm (loads it)."""
    args = REDUCED_RUN if reduced else DEFAULT_RUN
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla")
        runs = {name: timed_run(args, os.path.join(tmp, name), cache) for name in ("cold", "warm")}
    out = sys.stdout
    out.write(f"experiments.main {' '.join(args)}: seconds per phase (wall clock)\n")
    out.write(f"{'phase':<14}{'cold':>9}{'warm':>9}\n" + "-" * 32 + "\n")
    for phase in (*PHASES, "exit"):
        values = [r["phases"].get(phase) for r in runs.values()]
        if any(values):
            out.write(f"{phase:<14}" + "".join(f"{v or 0:>9.2f}" for v in values) + "\n")
    out.write("-" * 32 + "\n")
    for label, key, fmt in TOTALS:
        out.write(f"{label:<14}" + "".join(f"{r[key]:>9{fmt}}" for r in runs.values()) + "\n")
    same = runs["cold"]["metrics"] == runs["warm"]["metrics"]
    out.write(f"cold and warm metrics {'identical' if same else 'DIFFER'}\n")
    return {"suite": "time_to_result", "args": list(args), "runs": runs, "identical": same,
            **_environment()}  # fmt: skip


# ----------------------------------------------------------------------- accelerator

ACCELERATOR_TARGETS = {  # The goals of the accelerator suite on one GPU (full size only).
    "one model, 30 epochs after compile (s)": 0.5,
    "16 vmapped VAEs / one VAE": 2.0,
    "benchmark grid (s)": 120.0,
}


def _environment() -> dict:
    """The pipeline's record of versions and devices, and the first device's kind."""
    from experiments.pipeline import environment_record  # noqa: PLC0415

    return {**environment_record(), "device": jax.devices()[0].device_kind}


def _peak_memory() -> dict:
    """Peak memory of device 0 (where the backend reports it) and of this process (host)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {"device_peak_bytes": stats.get("peak_bytes_in_use"),
            "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def accelerator(*, reduced: bool = False) -> dict:
    """Training, vmapped-VAE cost, scoring throughput and the whole grid, timed.

    Full size: 30 epochs; K = 1, 16, 64, 256; the grid of AE and beta-VAE at
    beta 0.5/1/2, seeds 0-2, digits 0-9 (the AE has no beta: 30 AEs and 90
    VAEs). ``reduced``: 2 epochs, K = 1 and 2, one digit, one seed, one beta.
    """
    epochs = 2 if reduced else 30
    sizes = (1, 2) if reduced else (1, 16, 64, 256)
    split = one_class_split(load_dataset(), normal_class=0)
    images = jax.device_put(split.train_images)
    n, record = images.shape[0], {"suite": "accelerator", "reduced": reduced, **_environment()}
    out = sys.stdout
    out.write(f"{record['device']} ({record['backend']}), {len(record['devices'])} device(s); "
              f"{n} training images, {epochs} epochs{' (reduced)' if reduced else ''}\n\n")
    models, params = {}, {}
    for name in rules.MODEL_NAMES:
        model = make_model(name)
        r = train(keys.member_keys(0, name, 1).train[0], images, 1.0, model=model, epochs=epochs,
                  hooks=())  # fmt: skip
        params[name] = (model, r.params)
        models[name] = {"train_seconds": r.train_seconds, "compile_seconds": r.compile_seconds,
                        "images_per_second": epochs * n / r.train_seconds}  # fmt: skip
        out.write(f"{name.upper():<4} {epochs} epochs {r.train_seconds:7.2f} s after a "
                  f"{r.compile_seconds:.1f} s compile: {epochs * n / r.train_seconds:,.0f} img/s\n")
    record["models"] = models

    vmapped = []
    out.write(f"\n{'K VAEs':>7}{'seconds':>10}{'/ one':>8}{'/ K single':>11}\n")
    for k in sizes:
        if k == 1:
            seconds = models["vae"]["train_seconds"]
        else:
            r = train(jax.random.split(jax.random.key(1), k), images, jnp.linspace(0.5, 2.0, k),
                      model=make_model("vae"), epochs=epochs, hooks=(), group_size=0)
            seconds = r.train_seconds
        one = models["vae"]["train_seconds"]
        vmapped.append({"k": k, "seconds": seconds, "per_one": seconds / one,
                        "per_k_singles": seconds / (k * one)})  # fmt: skip
        out.write(f"{k:>7}{seconds:>10.2f}{seconds / one:>8.2f}{seconds / (k * one):>11.3f}\n")
    record["vmapped_vaes"] = vmapped

    record["scoring"] = {}
    out.write("\nscoring the test set (mean score; after compile)\n")
    for name, (model, p) in params.items():
        score_fn = scoring.make_score_fn(model)
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
    out.write(f"\nbenchmark grid: {g['models']} models ({g['grid']}), {epochs} epochs: "
              f"{g['seconds']:.1f} s (of which training {g['train_seconds']:.1f} s, compiling "
              f"{g['compile_seconds']:.1f} s)\n")
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
            grid = dataclasses.replace(grid, betas=(1.0,), seeds=(0,), classes=(0,))
        t = time.perf_counter()
        result = pipeline.run(grid, kind="sweep")
        seconds = time.perf_counter() - t
    phases = result.timings.phases
    return {
        "grid": f"betas {list(grid.betas)}, seeds {list(grid.seeds)}, classes "
                f"{list(grid.classes)}", "models": len({(r['model'], r['beta'], r['seed'],
                r['normal_class']) for r in result.rows}), "seconds": seconds,
        "train_seconds": phases.get("train", 0.0), "compile_seconds": phases.get("compile", 0.0),
        "phases": phases,
        "mean_auroc": {m: float(np.mean([r["auroc"] for r in result.rows if r["model"] == m]))
                       for m in rules.MODEL_NAMES},
    }  # fmt: skip


if __name__ == "__main__":
    cli.command(body)
