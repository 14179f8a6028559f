"""The default run's time to result: ``experiments.main --beta=2`` cold and warm.

  python -m benchmarks.time_to_result            # runs/<time>_benchmark_time_to_result.json
  python -m benchmarks.time_to_result --reduced  # a one-epoch tiny model (the tests run it)

Runs the command twice in fresh processes that share an initially empty
compilation cache (cold: compiles everything; warm: loads it) and prints where
each run's wall time went, phase by phase (:mod:`experiments.timing`), with the
wall time (``os.wait4``), the peak RSS and the process exit that a run cannot
see itself; checks that both runs' metrics are identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks import common
from experiments import cli

flags.adopt_module_key_flags(common)

# The phases of a run, in the order they happen (experiments.timing); "exit" is the
# wall time the run's own clock cannot see: process teardown after the last file.
PHASES = ("startup", "backend", "imports", "data", "compile", "train", "checkpoints",
          "scoring", "metrics", "baselines", "plots", "files", "tensorboard", "other")  # fmt: skip
TOTALS = (("wall", "wall_seconds", ".2f"), ("training", "train_seconds", ".2f"),
          ("wall/training", "ratio", ".2f"), ("peak RSS MB", "peak_rss_mb", ".0f"))  # fmt: skip
DEFAULT_RUN = ("--beta=2",)
REDUCED_RUN = ("--models=ae", "--epochs=1", "--hidden_dims=32", "--latent_dim=4",
               "--normal_class=1", "--anomaly_fraction=0.1")


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
            **common.environment()}  # fmt: skip


body = common.suite_body("time_to_result", time_to_result)


if __name__ == "__main__":
    cli.command(body)
