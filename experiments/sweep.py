"""Train every (beta, seed) beta-VAE and every seed's AE per class as one vmapped program.

  python -m experiments.sweep --betas=0.5,1,2,4,8 --seeds=0,1,2 --classes=0-9
  python -m experiments.sweep --betas=1,4 --learning_rates=1e-3,3e-4 --classes=0
  python -m experiments.sweep --dataset=fashion_mnist --classes=Sandal,Bag
  python -m experiments.sweep --dataset=fashion_mnist --preset=best   # the headline row

Writes sweep.json, sweep.csv, summary.txt and plots into a new output folder and
prints AUROC mean +- std over seeds per beta and class. Each row equals
``experiments.main`` with the same flags (same seed, split seed, beta, class and
smoothing). Invalid settings exit with code 1 and one line on stderr, before any
training.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from experiments import cli
from experiments.config import (
    ConfigError,
    SweepConfig,
    load_config,
    parse_list,
    preset_values,
    validate_sweep,
)

cli.define_experiment_flags(exclude=("beta", "normal_class", "seed", "score_smoothing", "score"))
_S = SweepConfig()
flags.DEFINE_string("betas", ",".join(f"{b:g}" for b in _S.betas), "KL weights of the beta-VAEs.")
flags.DEFINE_string(
    "seeds", ",".join(map(str, _S.seeds)), "Training seeds (init, shuffling, sampling)."
)
flags.DEFINE_string(
    "learning_rates", None,
    "Adam learning rates, a grid axis (e.g. 1e-3,3e-4); default: --learning_rate.",
)
cli.define_class_list_flags()
flags.DEFINE_string(
    "score_smoothing",
    ",".join(f"{s:g}" for s in _S.smoothings),
    "Residual blurs (pixels) to score every trained model with, e.g. 0,1,2 (no retraining).",
)
flags.DEFINE_string("score", ",".join(_S.scores), "Scores to score every trained model with, "
                    "e.g. residual,shift,latent_knn (no retraining; docs/usage.md).")  # fmt: skip
flags.DEFINE_integer(
    "group_size", None, "Models vmapped together (0: all); default: all on GPU/TPU, 2 on CPU."
)
flags.DEFINE_string(
    "mesh_layout",
    _S.mesh_layout,
    "With several devices: models (spread them) or data (split batches).",
)
flags.DEFINE_string("resume", None, "Continue the interrupted sweep in this folder.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS
GRID_FLAGS = ("betas", "seeds", "classes", "digits", "score_smoothing", "score", "group_size",
              "mesh_layout", "learning_rates")  # fmt: skip


def body():
    if FLAGS.resume:
        given = [n for n in GRID_FLAGS if FLAGS[n].present] + list(cli.explicit_flag_values())
        if given:
            raise ConfigError(f"--resume keeps the sweep's settings; drop --{given[0]}")
        config = load_config(FLAGS.resume, flag="resume", single=False)
        validate_sweep(dataclasses.replace(
            config, base=dataclasses.replace(config.base, output_dir=None)))  # fmt: skip
    else:
        base = cli.experiment_config_from_flags(score_smoothing=0.0, score="residual")  # Axes.
        # A preset's beta and smoothing become the axes, unless the axes are given.
        preset = preset_values(base.preset, base.dataset)
        betas = FLAGS.betas if FLAGS["betas"].present or "beta" not in preset else \
            f"{preset['beta']}"  # fmt: skip
        smoothings = FLAGS.score_smoothing if FLAGS["score_smoothing"].present else \
            f"{preset.get('score_smoothing', FLAGS.score_smoothing)}"  # fmt: skip
        scores = FLAGS.score if FLAGS["score"].present else preset.get("score", FLAGS.score)
        if FLAGS.learning_rates is not None and FLAGS["learning_rate"].present:
            raise ConfigError("--learning_rates and --learning_rate: give one")
        config = SweepConfig(
            betas=parse_list(betas, name="betas", item=float),
            learning_rates=() if FLAGS.learning_rates is None else
            parse_list(FLAGS.learning_rates, name="learning_rates", item=float),
            seeds=parse_list(FLAGS.seeds, name="seeds"),
            classes=cli.classes_from_flags(base.dataset),
            smoothings=parse_list(smoothings, name="score_smoothing", item=float),
            scores=parse_list(scores, name="score", item=str),
            group_size=FLAGS.group_size,
            mesh_layout=FLAGS.mesh_layout,
            base=base,
        )
        validate_sweep(config)
    return cli.pipeline_work(config, kind="sweep", resume=bool(FLAGS.resume))


if __name__ == "__main__":
    cli.command(body)
