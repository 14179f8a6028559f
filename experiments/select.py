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

import numpy as np
from absl import flags

from experiments import cli
from experiments.config import ConfigError

flags.DEFINE_list("mnist", [], "Sweep folders of the MNIST candidates.")
flags.DEFINE_list("fashion_mnist", [], "Sweep folders of the Fashion-MNIST candidates.")
flags.DEFINE_list("within", [], "Sweep folders of one dataset's within-dataset candidates "
                  "(experiments.config.WITHIN_CANDIDATES, scored with --validation_images): "
                  "each class's pick by the leave-classes-out rule, and its test AUROC.")
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


def _matches(row: dict, candidate: dict, epochs: int) -> bool:
    return (epochs == candidate["epochs"] and row["model"] == candidate["model"]
            and row.get("beta") == candidate["beta"]
            and row.get("smoothing") == candidate["smoothing"]
            and (row.get("score") or "residual") == candidate["score"])  # fmt: skip


def within(rows_by_epochs: dict[int, list[dict]], candidates=None, incumbents=None) -> dict:
    """The leave-classes-out rule (``experiments.config``: ``WITHIN_CANDIDATES``, and the
    second decision over ``GEOM_CANDIDATES``) on one dataset's rows (by their sweep's epochs).

    Args:
      rows_by_epochs: :func:`load_rows`' rows.
      candidates: The pool, simplest first (default ``WITHIN_CANDIDATES``).
      incumbents: Optional ``{class: candidate}``: put first in that class's pool (a second
        decision: the first's pick, then ``candidates``).

    Returns:
      ``{"picks": {class: index into its pool}, "pools": {class: [candidate]}, "validation":
      {class: [score per pool candidate]}, "test": {class: [[test AUROC per seed] per pool
      candidate]}, "headline": {class: [test AUROC per seed]}}``. Validation scores use the
      rows' ``validation`` AUROCs only.
    """
    from experiments.config import WITHIN_CANDIDATES  # noqa: PLC0415

    candidates = list(candidates or WITHIN_CANDIDATES)
    everyone = candidates + [c for c in (incumbents or {}).values() if c not in candidates]
    found = []  # Per candidate of `everyone`: {task: {seed: row}}.
    for candidate in everyone:
        rows = {}
        for epochs, group in rows_by_epochs.items():
            for r in group:
                if _matches(r, candidate, epochs):
                    rows.setdefault(int(r["normal_class"]), {})[r["seed"]] = r
        if not rows:
            raise ConfigError(f"no sweep row of the candidate {candidate}")
        found.append(rows)
    classes = sorted(found[0])
    if any(sorted(f) != classes for f in found):
        raise ConfigError("the candidates' sweeps cover different classes")
    if any("validation" not in r for f in found for t in f.values() for r in t.values()):
        raise ConfigError("the sweeps have no validation scores (run them with "
                          "--validation_images)")  # fmt: skip
    result = {"picks": {}, "pools": {}, "validation": {}, "test": {}, "headline": {}}
    for c in classes:
        pool = ([incumbents[c]] if incumbents else []) + [
            x for x in candidates if not incumbents or x != incumbents[c]]
        pool_rows = [found[everyone.index(x)] for x in pool]
        means, errors = [], []
        for rows in pool_rows:
            tasks = [np.mean([np.mean([v for k, v in r["validation"].items()
                                       if int(k) not in (c, task)]) for r in seeds.values()])
                     for task, seeds in rows.items() if task != c]  # fmt: skip
            means.append(float(np.mean(tasks)))
            errors.append(float(np.std(tasks) / np.sqrt(len(tasks))))
        top = int(np.argmax(means))
        pick = next(i for i, m in enumerate(means) if m >= means[top] - errors[top])
        test = [[r["auroc"] for _, r in sorted(rows[c].items())] for rows in pool_rows]
        result["picks"][c], result["pools"][c] = pick, pool
        result["validation"][c], result["test"][c] = means, test
        result["headline"][c] = test[pick]
    return result


def decisions(rows_by_epochs: dict[int, list[dict]]) -> tuple[dict, dict | None]:
    """The within-dataset rule's result, and the second decision's over the transform-
    classifier family (``GEOM_CANDIDATES``) where the rows hold it (else None)."""
    from experiments.config import GEOM_CANDIDATES  # noqa: PLC0415

    first = within(rows_by_epochs)
    if not any(_matches(r, GEOM_CANDIDATES[0], e) for e, g in rows_by_epochs.items() for r in g):
        return first, None
    picks = {c: first["pools"][c][i] for c, i in first["picks"].items()}
    return first, within(rows_by_epochs, GEOM_CANDIDATES, picks)


def class_means(per_class: dict) -> tuple[float, float]:
    """The mean over classes and its std over seeds (each seed's mean over classes)."""
    per_seed = np.mean(np.array(list(per_class.values())), axis=0)
    return float(np.mean(per_seed)), float(np.std(per_seed))


def load_rows(folders: list[str]) -> dict[int, list[dict]]:
    """The rows of each sweep folder, by its epochs."""
    from jax_vae import runs  # noqa: PLC0415

    rows: dict[int, list[dict]] = {}
    for folder in folders:
        try:
            record = runs.read_completion(folder, "sweep")
        except runs.RunFolderError as e:
            raise ConfigError(f"{folder}: not a finished sweep ({e})") from None
        rows.setdefault(record["config"]["epochs"], []).extend(
            {"normal_class": r.get("digit"), **r} for r in record["rows"])
    return rows


def _write_within(result: dict, title: str) -> None:
    out = sys.stdout
    out.write(f"{title}:\n")
    for c, i in result["picks"].items():
        cand = result["pools"][c][i]
        out.write(f"  class {c}: {cand['model']} {cand['score']:<17} validation "
                  f"{result['validation'][c][i]:.4f}, test AUROC "
                  f"{np.mean(result['headline'][c]):.4f}\n")  # fmt: skip
    mean, std = class_means(result["headline"])
    out.write(f"  headline: {mean:.4f} +- {std:.4f}\n")
    pools = {tuple(map(id, p)) for p in result["pools"].values()}
    if len(pools) == 1:  # One pool for every class: each candidate's mean over the classes.
        for i, cand in enumerate(next(iter(result["pools"].values()))):
            m, sd = class_means({c: t[i] for c, t in result["test"].items()})
            out.write(f"  candidate {i} {cand['model']} {cand['score']:<17} test AUROC "
                      f"{m:.4f} +- {sd:.4f} (not a result: all classes' own test labels)\n")


def body():
    if FLAGS.within:

        def work(_):
            first, second = decisions(load_rows(FLAGS.within))
            _write_within(first, "within the dataset (leave-classes-out on the training split)")
            if second:
                _write_within(second, "the transform-classifier family after it "
                              "(GEOM_CANDIDATES): the headline")  # fmt: skip

        return work
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
