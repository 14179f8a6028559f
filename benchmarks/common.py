"""What the suites that write a JSON share: ``--output``, ``--reduced`` and the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import flags

from experiments.config import ConfigError
from jax_vae.runs import new_run_dir, write_json

flags.DEFINE_bool("reduced", False, "A small smoke-test version (the test suite runs it).")
flags.DEFINE_string("output", None, "The JSON file to write (default: "
                    "runs/<time>_benchmark_<suite>.json).")  # fmt: skip
FLAGS = flags.FLAGS


def no_compilation_cache() -> None:
    """Compile times are measured: JAX's persistent cache stays off unless asked for."""
    if "compilation_cache" in FLAGS and not FLAGS["compilation_cache"].present:
        FLAGS.compilation_cache = ""


def output_path(suite: str) -> str:
    """``--output``, or a new file under runs/; its folder is made (and checked) now."""
    path = FLAGS.output or new_run_dir(f"benchmark_{suite}") + ".json"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output {path}: {folder} is not writable")
    return path


def write(path: str, record: dict) -> None:
    write_json(path, record)
    sys.stdout.write(f"\nwrote {path}\n")


def environment() -> dict:
    """The pipeline's record of versions and devices, and the first device's kind."""
    import jax  # noqa: PLC0415

    from experiments.pipeline import environment_record  # noqa: PLC0415

    return {**environment_record(), "device": jax.devices()[0].device_kind}


def suite_body(suite: str, measure: Callable[..., dict]) -> Callable:
    """The command body of a suite that writes one JSON: ``--output`` is checked first, then
    ``measure(reduced=--reduced)`` runs and its record is written there."""

    def body():
        no_compilation_cache()
        output = output_path(suite)
        return lambda _: write(output, measure(reduced=FLAGS.reduced))

    return body
