"""What the commands share: flags, their parsing, and the one-line error contract.

Nothing here imports JAX: a command parses and validates its flags first, and
only then starts JAX and the pipeline (:func:`command`), so a typo fails in a
fraction of a second. Every user error ends the command with one line on
stderr and exit code 1; Ctrl-C with one line and exit code 130.
"""

from __future__ import annotations

import dataclasses
import gc
import logging as std_logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from absl import app, flags, logging

from experiments.config import (
    SETTING_HPARAMS,
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    data_options,
    parse_classes,
    preset_values,
)
from experiments.timing import Timings, process_start
from jax_vae import errors, plugins, rules, vocab

FLAGS = flags.FLAGS
_DEFINERS = {
    "int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string,
    "bool": flags.DEFINE_bool,
    "float | None": flags.DEFINE_float, "str | None": flags.DEFINE_string,
    "int | None": flags.DEFINE_integer,
}  # fmt: skip


def define_experiment_flags(*, exclude: Iterable[str] = ()) -> None:
    """Defines one flag per ExperimentConfig field (default and help from the field).

    The command's module adopts them as its own (``--help`` lists them) with
    ``flags.adopt_module_key_flags(cli)``.
    """
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in exclude or not field.metadata.get("flag", True):
            continue
        help_text = field.metadata["help"]
        if field.name == "normal_class":  # An index or a name: parsed with the dataset known.
            flags.DEFINE_string(field.name, str(field.default), help_text)
            flags.DEFINE_integer("normal_digit", None, "MNIST: the normal digit (--normal_class).")
        elif isinstance(field.default, tuple):
            flags.DEFINE_list(field.name, [str(v) for v in field.default], help_text)
        else:
            _DEFINERS[field.type](field.name, field.default, help_text)


def experiment_config_from_flags(**overrides: Any) -> ExperimentConfig:
    """An ExperimentConfig from the parsed flags; fields without a flag from ``overrides``.

    With ``--preset``, the preset's values replace the defaults of the flags not
    given explicitly.
    """
    values = {}
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.name in FLAGS and field.metadata.get("flag", True):  # Else: the default.
            values[field.name] = FLAGS[field.name].value
    dataset = values.get("dataset", "mnist")
    if "normal_class" in FLAGS and "normal_class" not in overrides:
        values["normal_class"] = _normal_class(dataset)
    # An unknown preset sets nothing here; validate() names it. A run's preset may depend on
    # its class (--preset=best on a benchmark: that class's pick).
    for name, value in preset_values(values.get("preset"), dataset,
                                     values.get("normal_class")).items():  # fmt: skip
        if name in values and name not in overrides and not FLAGS[name].present:
            values[name] = value
    for name in ("hidden_dims", "image_size"):
        if name in values:
            try:
                values[name] = tuple(int(h) for h in values[name])
            except ValueError:
                raise ConfigError(
                    f"--{name} must be a comma list of integers, got {','.join(values[name])}"
                ) from None
    if "models" in values:
        values["models"] = tuple(m.strip().lower() for m in values["models"])
    if "score_alternatives" in values:
        values["score_alternatives"] = tuple(s.strip() for s in values["score_alternatives"])
    if "hparams" in FLAGS and "hparams" not in overrides:
        for name, text in parse_assignments(FLAGS["hparams"].value or [], flag="hparams"):
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"--hparams {name} must be a number, got {text!r}") from None
            if name in SETTING_HPARAMS:  # --hparams=beta=2 is --beta=2.
                if name in FLAGS and FLAGS[name].present:
                    raise ConfigError(f"--hparams sets {name} and so does --{name}; give one")
                field_type = ExperimentConfig.__dataclass_fields__[name].type
                values[name] = int(value) if field_type == "int" and value.is_integer() else value
            else:
                values.setdefault("hparams", {})[name] = value
    values.setdefault("imports", imported())
    return ExperimentConfig(**values)


def parse_assignments(items: Iterable[str], *, flag: str) -> list[tuple[str, str]]:
    """``name=value`` items (``noise=0.3``; for ``--grid`` the value a comma list,
    ``noise=0.1,0.4``) as (name, value text) pairs, each name once."""
    pairs, seen = [], set()
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier() or not text.strip():
            raise ConfigError(f"--{flag} takes name=value{'s' if flag == 'grid' else ''} "
                              f"(e.g. noise=0.3), got {item!r}")  # fmt: skip
        if name in seen:
            raise ConfigError(f"--{flag} gives {name} twice")
        seen.add(name)
        pairs.append((name, text))
    return pairs


def define_hparams_flag() -> None:
    """``--hparams=noise=0.3,beta=2``: a single run's hyperparameters, by name."""
    flags.DEFINE_list("hparams", [], "Hyperparameters by name, e.g. noise=0.3,beta=2: those of "
                      "the models (their registry entries' hparams), beta, learning_rate, "
                      "kl_warmup_epochs.")  # fmt: skip


def define_grid_flag() -> None:
    """``--grid=noise=0.1,0.2,0.4`` (repeatable): an axis of a sweep, by name."""
    flags.DEFINE_multi_string("grid", [], "A grid axis: name=values, e.g. noise=0.1,0.2,0.4 "
                              "(repeat for more axes): a hyperparameter of the models, beta, "
                              "learning_rate, kl_warmup_epochs; also seed, normal_class, "
                              "score_smoothing and score, as --seeds, --classes, "
                              "--score_smoothing and --score spell them.")  # fmt: skip


def imported() -> tuple[dict[str, str], ...]:
    """What ``--import`` loads (loaded once per process: :func:`jax_vae.plugins.load`)."""
    return plugins.load_all(FLAGS["import"].value or []) if "import" in FLAGS else ()


def _normal_class(dataset: str) -> int:
    """--normal_class (an index or a name of one of the dataset's classes) or --normal_digit."""
    text = FLAGS.normal_class
    if FLAGS["normal_digit"].present:
        if dataset != "mnist":
            raise ConfigError(
                f"--normal_digit is for MNIST; {dataset} has classes: use --normal_class"
            )
        if FLAGS["normal_class"].present:
            raise ConfigError("--normal_digit and --normal_class name the same thing; give one")
        text = FLAGS.normal_digit
    known = vocab.DATASETS + vocab.LOCAL_DATASETS
    return rules.class_index("--normal_class", text, dataset if dataset in known else "mnist")


def define_class_list_flags() -> None:
    """--classes (indices, ranges or names) and its MNIST alias --digits, for grids."""
    flags.DEFINE_string("classes", "0-9", "Normal classes: indices, ranges or names, e.g. 0-9, "
                        "1,7 or Sandal,Bag.")  # fmt: skip
    flags.DEFINE_string("digits", None, "MNIST: the normal digits (--classes).")


def classes_from_flags(dataset: str) -> tuple[int, ...]:
    """The grid's classes from --classes, or --digits on MNIST."""
    if FLAGS["digits"].present:
        if dataset != "mnist":
            raise ConfigError(f"--digits is for MNIST; {dataset} has classes: use --classes")
        if FLAGS["classes"].present:
            raise ConfigError("--digits and --classes name the same thing; give one")
        return parse_classes(FLAGS.digits, name="digits", dataset=dataset)
    if dataset in vocab.LOCAL_DATASETS and not FLAGS["classes"].present:
        return (0,)  # A user's images: one normal class.
    return parse_classes(FLAGS.classes, name="classes", dataset=dataset)


def explicit_flag_values() -> dict[str, Any]:
    """ExperimentConfig values of the flags given on the command line (or a flagfile)."""
    config = experiment_config_from_flags()
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(ExperimentConfig)
             if f.name in FLAGS and FLAGS[f.name].present and f.metadata.get("flag", True)}
    if "hparams" in FLAGS and FLAGS["hparams"].present:
        given["hparams"] = config.hparams
        given.update({n: getattr(config, n) for n in SETTING_HPARAMS
                      if any(a.startswith(f"{n}=") for a in FLAGS["hparams"].value)})
    if "import" in FLAGS and FLAGS["import"].present:
        given["imports"] = config.imports
    return given


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def fail(message: str, code: int = 1) -> NoReturn:
    """Ends the program with one line on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors are one line and exit code 1 (not a usage block); a
    help flag prints the usage and exits 0 (absl exits 1: help asked for is no error)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except SystemExit:
        if any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise


flags.DEFINE_multi_string(
    "import", [], "A Python file or importable module to import first (repeatable): what it "
    "registers (models, scores) is usable with --models and --score. The run records it.")
flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (else from the cluster)."
)
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")


def default_compilation_cache() -> str:
    """$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/jax-vae/xla (~/.cache/jax-vae/xla)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jax-vae", "xla")


flags.DEFINE_string(
    "compilation_cache", default_compilation_cache(),
    "Folder of JAX's persistent compilation cache: a rerun with the same shapes loads its "
    "programs instead of compiling them. Empty: off. Delete the folder to clear it.",
)  # fmt: skip
# Programs that compile faster than this are not worth a file each (JAX's default: 1 s).
CACHE_MIN_COMPILE_SECONDS = 0.0


# Libraries whose INFO lines are hidden unless --verbosity is given: Orbax logs about 500
# lines of checkpoint bookkeeping per default run, against 64 lines of our own.
QUIET_LIBRARIES = ("orbax",)


class LibraryInfoFilter(std_logging.Filter):
    """Drops records below WARNING that come from the source files of given packages."""

    def __init__(self, packages: Iterable[str]):
        super().__init__()
        self.fragments = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            fragment in record.pathname for fragment in self.fragments
        )


def quiet_libraries(packages: Iterable[str] = QUIET_LIBRARIES) -> None:
    """Hides the INFO (and debug) lines of ``packages`` on the absl handler; idempotent."""
    handler = logging.get_absl_handler()
    for old in [f for f in handler.filters if isinstance(f, LibraryInfoFilter)]:
        handler.removeFilter(old)
    handler.addFilter(LibraryInfoFilter(packages))


def _usable_folder(path: str) -> bool:
    """Whether the compilation cache can live in ``path`` (made if missing); a cache is
    an optimization, so an unusable one is one warning and a run without it."""
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return True
    except OSError:
        pass
    logging.warning("--compilation_cache %s cannot be written; compiling without the cache", path)
    return False


def backend_message(platforms: str, error: BaseException) -> str:
    """One line for a backend JAX cannot start: which, why, and how to get it."""
    why = (str(error).strip().splitlines() or [type(error).__name__])[0]
    asked = f"JAX_PLATFORMS={platforms}" if platforms else "the default backend"
    hints = {"cuda": "for an NVIDIA GPU install the CUDA jaxlib: .venv/bin/pip install -e "
                     "'.[cuda]'", "gpu": "for an NVIDIA GPU install the CUDA jaxlib: "
                     ".venv/bin/pip install -e '.[cuda]'",
             "tpu": "on a Cloud TPU VM install it: .venv/bin/pip install -e . 'jax[tpu]'"}
    hint = next((h for p, h in hints.items() if p in platforms.lower().split(",")),
                "install the jaxlib for that backend")  # fmt: skip
    return (f"JAX cannot start {asked} ({why}): no such backend is installed; {hint}, or unset "
            "JAX_PLATFORMS to run on the CPU")


def start() -> None:
    """Starts JAX: joins a multi-host run when flags or the cluster say so; INFO logging
    by default (without the INFO lines of QUIET_LIBRARIES)."""
    import jax  # noqa: PLC0415  (only once the flags are known to be valid)

    from jax_vae.sharding import initialize_distributed  # noqa: PLC0415

    try:
        joined = initialize_distributed(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    except (RuntimeError, ValueError) as e:
        fail(f"could not join the multi-host run: {str(e).splitlines()[0]}")
    if FLAGS.compilation_cache and _usable_folder(FLAGS.compilation_cache):
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        jax.devices()  # Start the backend quietly: its INFO lines on absent TPUs etc. are noise.
    except (RuntimeError, AssertionError) as e:  # jax 0.10 asserts when a platform is missing.
        fail(backend_message(os.environ.get("JAX_PLATFORMS", ""), e))
    logging.set_verbosity(verbosity)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # Per-epoch progress is the point of a long run.
        quiet_libraries()
    if joined:
        logging.info("process %d of %d", jax.process_index(), jax.process_count())


Work = Callable[[Timings], Any]


def pipeline_work(grid: SweepConfig, **run_args: Any) -> Work:
    """The work of ``main``, ``sweep`` and ``baselines``: run the grid, write its records."""

    from jax_vae.data import load_dataset_early  # noqa: PLC0415  (NumPy only)

    base = grid.base
    # The data loads while JAX and the pipeline import (their errors still come in order).
    dataset = load_dataset_early(base.data_source, **data_options(base))

    def work(timings: Timings) -> None:
        with timings.phase("imports"):
            from experiments import pipeline, report  # noqa: PLC0415  (JAX, plots: after checks)
        report.write(pipeline.run(grid, timings=timings, dataset=dataset, **run_args))

    return work


def command(body: Callable[[], Work]) -> None:
    """Runs a command: ``body()`` checks the flags and returns the work to do.

    ``body`` runs before JAX starts, so that its errors come at once; the work
    it returns runs after :func:`start`, with the command's :class:`Timings`.
    A user error (:class:`jax_vae.errors.Error`) is one line and exit code 1;
    Ctrl-C one line and exit code 130.
    """

    def main(argv: list[str]) -> None:
        timings = Timings(process_start())
        timings.add("startup", timings.elapsed())  # Interpreter, absl, flags.
        try:
            if len(argv) > 1:
                raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
            imported()  # Before any model or score name is checked.
            work = body()
            with timings.phase("backend"):
                start()
            work(timings)
            # Done: spare the exit a garbage collection of every module's objects
            # (0.6 s with JAX, scikit-learn and matplotlib loaded); atexit still runs.
            gc.disable()
            gc.freeze()
        except errors.Error as e:
            fail(str(e))
        except KeyboardInterrupt as e:  # The pipeline's Interrupted says where to go on.
            fail(str(e) or "interrupted", code=130)

    app.run(main, flags_parser=parse_flags)
