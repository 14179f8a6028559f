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
    SETTING_HPARAMS,
    ConfigError,
    SweepConfig,
    load_config,
    parse_classes,
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
cli.define_grid_flag()
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
flags.DEFINE_integer(
    "validation_images", _S.validation_images,
    "Training images sampled per class to score every class's models on (0: none): the "
    "within-dataset selection's validation tasks (docs/benchmarks.md; no test image).",
)
flags.DEFINE_string("resume", None, "Continue the interrupted sweep in this folder.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS
GRID_FLAGS = ("betas", "seeds", "classes", "digits", "score_smoothing", "score", "group_size",
              "mesh_layout", "learning_rates", "grid", "import", "validation_images")  # fmt: skip


# The axes with flags of their own, by their --grid names: --grid=seed=0,1 is --seeds=0,1.
SPELLINGS = {"beta": "betas", "learning_rate": "learning_rates", "seed": "seeds",
             "normal_class": "classes", "score_smoothing": "score_smoothing", "score": "score"}


def _axes(base) -> dict:
    """The grid's axes from --grid and the axes' own flags (one mechanism, two spellings);
    a preset's beta, smoothing and score where neither gives them."""
    given = dict(cli.parse_assignments(FLAGS.grid, flag="grid"))
    preset = preset_values(base.preset, base.dataset)
    texts = {}
    for axis, flag in SPELLINGS.items():
        explicit = FLAGS[flag].present or (flag == "classes" and FLAGS["digits"].present)
        if axis in given and explicit:
            raise ConfigError(f"--grid={axis}=... and --{flag} give the same axis; give one")
        if axis in given:
            texts[axis] = given.pop(axis)
        elif not explicit and axis in preset:  # A preset's value is the axis' one value.
            texts[axis] = f"{preset[axis]}"
        elif axis != "normal_class":
            texts[axis] = FLAGS[flag].value
    if texts["learning_rate"] is not None and FLAGS["learning_rate"].present:
        raise ConfigError("--learning_rates and --learning_rate: give one")
    for name in set(given) & set(SETTING_HPARAMS):  # --kl_warmup_epochs, as an axis too.
        if FLAGS[name].present:
            raise ConfigError(f"--grid={name}=... and --{name} give the same axis; give one")
    return dict(
        betas=parse_list(texts["beta"], name="betas", item=float),
        learning_rates=() if texts["learning_rate"] is None else
        parse_list(texts["learning_rate"], name="learning_rates", item=float),
        seeds=parse_list(texts["seed"], name="seeds"),
        classes=parse_classes(texts["normal_class"], name="grid normal_class",
                              dataset=base.dataset) if "normal_class" in texts
        else cli.classes_from_flags(base.dataset),
        smoothings=parse_list(texts["score_smoothing"], name="score_smoothing", item=float),
        scores=parse_list(texts["score"], name="score", item=str),
        hparams={name: parse_list(text, name=f"grid {name}", item=float)
                 for name, text in given.items()},
    )  # fmt: skip


def _validation_images(base) -> int:
    """--validation_images, or the preset's where the flag is not given."""
    preset = preset_values(base.preset, base.dataset).get("validation_images")
    return FLAGS.validation_images if FLAGS["validation_images"].present or preset is None \
        else int(preset)


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
        config = SweepConfig(**_axes(base), group_size=FLAGS.group_size,
                             mesh_layout=FLAGS.mesh_layout,
                             validation_images=_validation_images(base), base=base)  # fmt: skip
        validate_sweep(config)
    return cli.pipeline_work(config, kind="sweep", resume=bool(FLAGS.resume))


if __name__ == "__main__":
    cli.command(body)
