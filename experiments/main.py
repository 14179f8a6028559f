"""Train an AE and a beta-VAE on one normal class and report anomaly-detection metrics.

  python -m experiments.main --beta=2
  python -m experiments.main --normal_digit=3 --models=vae --vae_score=mc
  python -m experiments.main --dataset=fashion_mnist --normal_class=Sandal
  python -m experiments.main --resume=runs/<run>            # continue an interrupted run
  python -m experiments.main --eval_only=runs/<run> --threshold_percentile=99

A run is the pipeline's grid of one: ``experiments.sweep`` with the same flags
gives the same row. Invalid settings exit with code 1 and one line on stderr,
before any training.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from experiments import cli
from experiments.config import ConfigError, SweepConfig, load_run_config, validate

cli.define_experiment_flags()
cli.define_hparams_flag()
flags.DEFINE_string(
    "resume", None, "Continue the interrupted run in this folder from its checkpoints."
)
flags.DEFINE_string(
    "eval_only", None, "Re-score the saved models of this finished run, no training."
)
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS

# Settings a resumed run may change (where it runs, where the data is) and,
# in addition, the ones an evaluation may change (how models are scored).
RESUME_SETTINGS = {"num_devices", "data_source", "data_dir"}
EVAL_SETTINGS = RESUME_SETTINGS | {
    "threshold_percentile", "anomaly_fraction", "vae_score", "mc_samples", "chunk_size",
    "score_smoothing", "score",
}  # fmt: skip


def _saved_config(flag: str, allowed: set[str]):
    """The run's saved settings, with the allowed flags given on the command line."""
    run_dir = getattr(FLAGS, flag)
    saved = load_run_config(run_dir, flag=flag)  # It imports what the run imported.
    changes = {}
    for name, value in cli.explicit_flag_values().items():
        if name == "output_dir":
            raise ConfigError(f"--{flag} writes into {run_dir}; drop --output_dir")
        if name == "imports":  # More code for the scores of an evaluation; a resume has all.
            if flag == "resume":
                raise ConfigError("--resume imports what the run imported; drop --import")
            paths = {r["path"] for r in saved.imports}
            changes[name] = saved.imports + tuple(r for r in value if r["path"] not in paths)
            continue
        if value == getattr(saved, name):
            continue
        if name not in allowed:
            raise ConfigError(
                f"--{name}={value} differs from the run's {name}={getattr(saved, name)}; "
                f"--{flag} keeps the run's settings (may change: {', '.join(sorted(allowed))})"
            )
        changes[name] = value
    return dataclasses.replace(saved, **changes)


def body():
    if FLAGS.resume and FLAGS.eval_only:
        raise ConfigError("--resume and --eval_only exclude each other")
    if FLAGS.resume:
        config = _saved_config("resume", RESUME_SETTINGS)
    elif FLAGS.eval_only:
        config = _saved_config("eval_only", EVAL_SETTINGS)
    else:
        config = cli.experiment_config_from_flags()
    # A resumed or re-scored run's folder exists by design; the pipeline checks it.
    validate(config if not (FLAGS.resume or FLAGS.eval_only) else
             dataclasses.replace(config, output_dir=None))  # fmt: skip

    return cli.pipeline_work(SweepConfig.single(config), resume=bool(FLAGS.resume),
                             eval_only=bool(FLAGS.eval_only))  # fmt: skip


if __name__ == "__main__":
    cli.command(body)
