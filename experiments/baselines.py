"""Classical baselines on exactly the runner's one-class split: PCA, kNN, OC-SVM, IsolationForest.

  python -m experiments.baselines --digits=0-9

Writes baselines.json, baselines.csv and summary.txt (AUROC per digit and mean)
into a new output folder. Invalid settings exit with code 1 and one line.
"""

from __future__ import annotations

from absl import app, flags

from experiments import cli
from experiments.config import parse_int_list
from experiments.sweeps import run_baselines
from jax_vae.baselines import BASELINES

# Only the split, threshold, data and output flags apply to the baselines.
cli.define_experiment_flags(
    exclude=(
        "beta", "normal_digit", "latent_dim", "hidden_dims", "epochs", "batch_size",
        "learning_rate", "models", "vae_score", "mc_samples", "chunk_size", "score_smoothing",
        "preset",
    )
)  # fmt: skip
flags.DEFINE_string("digits", "0-9", "Normal digits: a list and/or ranges, e.g. 0-9 or 1,7.")
flags.DEFINE_list("baselines", list(BASELINES), f"Baselines to fit: {', '.join(BASELINES)}.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    cli.start(argv)
    try:
        run_baselines(
            parse_int_list(FLAGS.digits, name="digits"),
            tuple(b.strip().lower() for b in FLAGS.baselines),
            cli.experiment_config_from_flags(),
        )
    except cli.USER_ERRORS as e:
        cli.fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
