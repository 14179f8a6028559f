"""Train an AE and a beta-VAE on one MNIST digit and report anomaly-detection metrics.

  python -m experiments.main --beta=2
  python -m experiments.main --normal_digit=3 --models=vae --vae_score=mc

Invalid settings exit with code 1 and one line on stderr, before any training.
"""

from __future__ import annotations

from absl import app

from experiments import cli
from experiments.runner import run_experiment

cli.define_experiment_flags()


def main(argv: list[str]) -> None:
    cli.start(argv)
    try:
        run_experiment(cli.experiment_config_from_flags())
    except cli.USER_ERRORS as e:
        cli.fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
