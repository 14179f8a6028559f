"""Train every (beta, seed) beta-VAE and every seed's AE per digit as one vmapped program.

  python -m experiments.sweep --betas=0.5,1,2,4,8 --seeds=0,1,2 --digits=0-9

Writes sweep.json, sweep.csv, summary.txt and plots into a new output folder and
prints AUROC mean +- std over seeds per beta and digit. Invalid settings exit
with code 1 and one line on stderr, before any training.
"""

from __future__ import annotations

from absl import app, flags

from experiments import cli
from experiments.config import (
    ConfigError,
    SweepConfig,
    load_sweep_config,
    parse_float_list,
    parse_int_list,
    validate_sweep,
)

cli.define_experiment_flags(exclude=("beta", "normal_digit", "seed", "score_smoothing", "preset"))
_S = SweepConfig()
flags.DEFINE_string("betas", ",".join(f"{b:g}" for b in _S.betas), "KL weights of the beta-VAEs.")
flags.DEFINE_string(
    "seeds", ",".join(map(str, _S.seeds)), "Model seeds (init, shuffling, sampling)."
)
flags.DEFINE_string("digits", "0-9", "Normal digits: a list and/or ranges, e.g. 0-9 or 1,7.")
flags.DEFINE_string(
    "score_smoothing",
    ",".join(f"{s:g}" for s in _S.smoothings),
    "Residual blurs (pixels) to score every trained model with, e.g. 0,1,2 (no retraining).",
)
flags.DEFINE_integer("split_seed", _S.split_seed, "Seed of the held-out split, fixed over seeds.")
flags.DEFINE_integer(
    "group_size", None, "Models vmapped together (0: all); default: all on GPU/TPU, 2 on CPU."
)
flags.DEFINE_string(
    "mesh_layout",
    _S.mesh_layout,
    "With several devices: models (spread them) or data (split batches).",
)
flags.DEFINE_string("resume", None, "Continue the interrupted sweep in this folder.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    cli.start(argv)
    try:
        if FLAGS.resume:
            grid_flags = (
                "betas", "seeds", "digits", "score_smoothing", "split_seed", "group_size",
                "mesh_layout",
            )  # fmt: skip
            given = [n for n in grid_flags if FLAGS[n].present] + list(cli.explicit_flag_values())
            if given:
                raise ConfigError(f"--resume keeps the sweep's settings; drop --{given[0]}")
            config = load_sweep_config(FLAGS.resume)
        else:
            config = _config_from_flags()
            validate_sweep(config)
        # Imported once the flags are known to be valid (see experiments.main).
        from experiments.sweeps import run_sweep  # noqa: PLC0415

        run_sweep(config, resume=bool(FLAGS.resume))
    except cli.USER_ERRORS as e:
        cli.fail(str(e))


def _config_from_flags() -> SweepConfig:
    """The grid the flags describe (not yet validated)."""
    return SweepConfig(
        betas=parse_float_list(FLAGS.betas, name="betas"),
        seeds=parse_int_list(FLAGS.seeds, name="seeds"),
        digits=parse_int_list(FLAGS.digits, name="digits"),
        smoothings=parse_float_list(FLAGS.score_smoothing, name="score_smoothing"),
        split_seed=FLAGS.split_seed,
        group_size=FLAGS.group_size,
        mesh_layout=FLAGS.mesh_layout,
        base=cli.experiment_config_from_flags(score_smoothing=0.0),  # Swept instead.
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
