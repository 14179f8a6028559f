"""Training throughput against the device's matmul peak, and the cost of vmapped models.

  python -m benchmarks.throughput                 # default model, digit 0
  python -m benchmarks.throughput --sweep_sizes=1,4,16 --epochs=3
  python -m benchmarks.throughput --profile       # also: time in matmuls (CPU)
  python -m benchmarks.throughput --architecture=conv --hidden_dims=32,64

Prints, per model: FLOPs per training image (from XLA's cost analysis of one
compiled training step), compile time, images/s, achieved GFLOP/s, the peak of
a large float32 matmul on the same device, their ratio, and the 30-epoch time
against its FLOP floor (FLOPs / peak); the TensorBoard writer's overhead; then
the cost of training K models as one vmapped program relative to K single
trainings. With ``--profile`` (CPU backend), a ``jax.profiler`` trace of a few
epochs splits an epoch into the time spent in the matmuls (dots and fusions
that contain one) and the rest.
"""

from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from benchmarks import common
from experiments import cli
from experiments.config import ConfigError, parse_list
from jax_vae import registry, rules, vocab
from jax_vae.data import load_dataset, one_class_split
from jax_vae.registry import build as make_model
from jax_vae.train import default_group_size, make_train, train

flags.DEFINE_list("models", ["ae", "vae"], "Models to benchmark.")
flags.DEFINE_integer("normal_class", 0, "Digit whose training images are used.")
flags.DEFINE_integer("epochs", 5, "Timed epochs per measurement (after compilation).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("sweep_sizes", "1,4,16", "K values for the K-model sweep cost; empty: skip.")
flags.DEFINE_integer("matmul_size", 0, "Side of the peak-matmul probe; 0 picks by backend.")
flags.DEFINE_bool("profile", False, "Profile epochs: time in matmuls vs the rest (CPU).")
flags.DEFINE_string("architecture", "mlp", "mlp or conv.")
flags.DEFINE_list("hidden_dims", ["400"], "Hidden widths (conv: channels, e.g. 32,64).")
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
    trainer, hparams = make_train(model, batch_size=batch_size), model.hparams
    state = trainer.init(jax.random.key(0), images[:batch_size], hparams)
    # An epoch over exactly one batch: the scan body runs once.
    lowered = jax.jit(trainer.epoch).lower(state, images[:batch_size], hparams)
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
    trainer, beta = make_train(model, batch_size=batch_size), model.hparams
    state = trainer.init(jax.random.key(0), images, beta)
    compiled = jax.jit(trainer.epoch, donate_argnums=0).lower(state, images, beta).compile()
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
        key, hparams = jax.random.split(key, k), {"beta": jnp.linspace(0.5, 4.0, k)}
    else:
        hparams = {"beta": 1.0}
    hparams = {h: v for h, v in hparams.items() if h in model.hparams}
    seconds = []
    result = train(
        key, images, hparams, model=model, epochs=epochs, batch_size=batch_size,
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
    sizes = parse_list(FLAGS.sweep_sizes, name="sweep_sizes") if FLAGS.sweep_sizes else ()
    rules.choice("--architecture", FLAGS.architecture, vocab.ARCHITECTURES)
    try:
        dims = tuple(int(d) for d in FLAGS.hidden_dims)
    except ValueError:
        raise ConfigError(
            f"--hidden_dims must be integers, got {','.join(FLAGS.hidden_dims)}"
        ) from None
    rules.widths("--hidden_dims", dims)
    if FLAGS.architecture == "conv":
        rules.conv_depth("--hidden_dims", dims)
    rules.choices("--models", models, registry.names())
    rules.normal_class("--normal_class", FLAGS.normal_class)
    rules.at_least("--epochs", FLAGS.epochs, 1)
    rules.at_least("--batch_size", FLAGS.batch_size, 1)
    rules.at_least("--matmul_size", FLAGS.matmul_size, 0, " (0 = by backend)")
    for k in sizes:
        rules.at_least("--sweep_sizes", k, 1)
    common.no_compilation_cache()
    build = functools.partial(make_model, hidden_dims=dims, architecture=FLAGS.architecture)
    return lambda _: benchmark(models, sizes, build=build)


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


if __name__ == "__main__":
    cli.command(body)
