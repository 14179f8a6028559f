"""The selection rules across datasets, applied to the candidates' sweeps.

  python -m experiments.select \
      --mnist=experiments/results/selection_e30,experiments/results/selection_e60 \
      --fashion_mnist=experiments/results/fmnist_selection_e30,experiments/results/fmnist_selection_e60

For each dataset: the candidate each rule of the protocol (``experiments.config.CANDIDATES``,
and the second family ``FUSION_CANDIDATES``: give both families' sweep folders; the rules
pool every candidate they hold) picks and its mean test AUROC there (mean +- std over
seeds, and class 0): ``synthetic`` (its own synthetic AUROC, normal data only), ``transfer``
(the best mean test AUROC on the other dataset), and ``oracle`` (its own test
AUROC: an upper bound, not a result). Then the pick for any other dataset (the
best mean test AUROC over both).
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import cli
from experiments.config import ConfigError

flags.DEFINE_list("mnist", [], "Sweep folders of the MNIST candidates.")
flags.DEFINE_list("fashion_mnist", [], "Sweep folders of the Fashion-MNIST candidates.")
FLAGS = flags.FLAGS
DATASETS = ("mnist", "fashion_mnist")


def load_candidates(folders: list[str]) -> tuple[dict, dict]:
    """(test AUROC summary, synthetic AUROC summary) of every candidate of the sweeps,
    labelled with their epochs (``VAE b=1 s=1 e60``)."""
    from experiments.report import summarize  # noqa: PLC0415  (JAX: after the flag checks)
    from jax_vae import runs  # noqa: PLC0415

    test, synthetic = {}, {}
    for folder in folders:
        try:
            record = runs.read_completion(folder, "sweep")
        except runs.RunFolderError as e:
            raise ConfigError(f"{folder}: not a finished sweep ({e})") from None
        tag = f" e{record['config']['epochs']}"
        rows = [{"normal_class": r.get("digit"), **r} for r in record["rows"]]  # Older: "digit".
        axes = tuple(record["config"].get("hparams") or ())  # The models' own axes.
        for target, metric in ((test, "auroc"), (synthetic, "synthetic_auroc")):
            target.update({k + tag: v for k, v in summarize(rows, metric=metric,
                                                            axes=axes).items()})  # fmt: skip
    return test, synthetic


def select(candidates: dict[str, tuple[dict, dict]]) -> dict[str, dict[str, str]]:
    """The pick of each rule on each dataset (both datasets' candidates are needed)."""
    from experiments.report import best  # noqa: PLC0415

    (a, b) = DATASETS
    picks = {}
    for dataset, other in ((a, b), (b, a)):
        test, synthetic = candidates[dataset]
        picks[dataset] = {
            "synthetic": best(synthetic),
            "transfer": best(candidates[other][0]),
            "oracle (own test labels, an upper bound)": best(test),
        }
    both = {k: {"mean": ((candidates[a][0][k]["mean"][0] + candidates[b][0][k]["mean"][0]) / 2,)}
            for k in candidates[a][0].keys() & candidates[b][0].keys()}  # fmt: skip
    picks["other datasets"] = {"best mean test AUROC over both": best(both)}
    return picks


def body():
    candidates = {}
    for dataset in DATASETS:
        if not getattr(FLAGS, dataset):
            raise ConfigError(f"--{dataset} needs the candidates' sweep folders")

    def work(_):
        for dataset in DATASETS:
            candidates[dataset] = load_candidates(getattr(FLAGS, dataset))
        out = sys.stdout
        for dataset, rules in select(candidates).items():
            out.write(f"\n{dataset}\n")
            for rule, label in rules.items():
                s = candidates.get(dataset, ({},))[0].get(label)
                if s is None:  # Another dataset, or a candidate this dataset's sweeps lack.
                    out.write(f"  {rule:<42} {label}\n")
                    continue
                zero = s["classes"].get("0", s["classes"].get(0))
                out.write(f"  {rule:<42} {label:<20} test AUROC {s['mean'][0]:.4f} +- "
                          f"{s['mean'][1]:.4f}, class 0 {zero[0]:.4f}\n")  # fmt: skip

    return work


if __name__ == "__main__":
    cli.command(body)
