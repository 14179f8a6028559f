"""Classical baselines on exactly the runner's one-class split: PCA, kNN, OC-SVM, IsolationForest.

  python -m experiments.baselines --classes=0-9
  python -m experiments.baselines --dataset=fashion_mnist

The same pipeline as the models (split, threshold, metrics, synthetic AUROC);
writes baselines.json, baselines.csv and summary.txt (AUROC per class and mean)
into a new output folder. Invalid settings exit with code 1 and one line.
"""

from __future__ import annotations

from absl import flags

from experiments import cli
from experiments.config import SweepConfig, validate_sweep
from jax_vae import rules, vocab

# Only the split, threshold, data and output flags apply to the baselines.
cli.define_experiment_flags(
    exclude=(
        "beta", "normal_class", "latent_dim", "hidden_dims", "epochs", "batch_size",
        "learning_rate", "models", "vae_score", "mc_samples", "chunk_size", "score_smoothing",
        "preset", "num_devices", "checkpoint_every", "likelihood", "kl_warmup_epochs",
        "ensemble_size", "architecture",
    )
)  # fmt: skip
cli.define_class_list_flags()
flags.DEFINE_list("baselines", list(vocab.BASELINES), "Baselines to fit.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def body():
    names = tuple(b.strip().lower() for b in FLAGS.baselines)
    rules.choices("--baselines", names, vocab.BASELINES)
    base = cli.experiment_config_from_flags(models=names, checkpoint_every=0)
    config = SweepConfig(betas=(1.0,), seeds=(FLAGS.seed,),
                         classes=cli.classes_from_flags(base.dataset), base=base)  # fmt: skip
    validate_sweep(config)
    return cli.pipeline_work(config, kind="baselines")


if __name__ == "__main__":
    cli.command(body)
