"""Sweeps: vmapped grid equals one-by-one training; CSV/JSON agree; bad flags."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os

import jax
import numpy as np
import pytest
from helpers import SIZES, cli, one_line_error, run_grid, run_single

from experiments import report
from experiments.config import (
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    load_config,
    parse_classes,
    parse_list,
)
from jax_vae import data, keys, metrics, registry, scoring, train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    config = SweepConfig(
        betas=(1.0, 4.0),
        seeds=(0, 1),
        classes=(1,),
        smoothings=(0.0, 1.5),
        base=ExperimentConfig(epochs=1, models=("ae", "vae"), **SIZES,
                              anomaly_fraction=0.1, output_dir=str(out)),
    )
    return config, out, run_grid(config, kind="sweep", plots=True)


def test_sweep_equals_models_trained_one_by_one(sweep, mnist):
    config, _, result = sweep
    split = data.one_class_split(mnist, normal_class=1, anomaly_fraction=0.1)
    vae_rows = [r for r in result["rows"] if r["model"] == "vae"]
    assert len(vae_rows) == 8  # 2 betas x 2 seeds x 2 smoothings.
    model = registry.build("vae", **SIZES)
    synthetic = data.synthetic_anomalies(split.val_images, seed=0)
    for (beta, seed), rows in itertools.groupby(
        sorted(vae_rows, key=lambda r: (r["beta"], r["seed"])), key=lambda r: (r["beta"], r["seed"])
    ):
        train_key, _ = keys.model_keys(seed, "vae")
        single = train.train(train_key, split.train_images, {"beta": beta}, model=model,
                             epochs=1)  # fmt: skip
        for row in rows:  # Each smoothing scores the same trained model.
            score_fn = model.score(smoothing=row["smoothing"])
            val = scoring.score(single.params, split.val_images, score_fn=score_fn)
            test = scoring.score(single.params, split.test_images, score_fn=score_fn)
            threshold = metrics.threshold_from_normals(val, percentile=95)
            m = metrics.detection_metrics(split.test_labels, test, threshold=threshold)
            assert row["auroc"] == pytest.approx(m.auroc, abs=1e-4)
            assert row["threshold"] == pytest.approx(m.threshold, rel=1e-3)
            synthetic_scores = scoring.score(single.params, synthetic, score_fn=score_fn)
            assert row["synthetic_auroc"] == pytest.approx(
                metrics.separation_auroc(val, synthetic_scores), abs=1e-4
            )
    # The four models differ (beta and seed both matter), and so do the smoothings.
    assert len({round(r["auroc"], 6) for r in vae_rows}) == 8


@pytest.mark.parametrize("seed", [0, 1])
def test_every_sweep_row_equals_the_single_run_with_the_same_flags(sweep, tmp_path, seed):
    # `seed` is the training seed in both commands; the split has its own split_seed.
    config, _, result = sweep
    single = run_single(dataclasses.replace(
        config.base, beta=4.0, seed=seed, score_smoothing=1.5, normal_class=1,
        output_dir=str(tmp_path / "r")))
    for name, beta in (("ae", None), ("vae", 4.0)):
        row = next(
            r
            for r in result["rows"]
            if (r["model"], r["beta"], r["seed"], r["smoothing"]) == (name, beta, seed, 1.5)
        )
        # Trained in a vmapped group vs alone: equal up to float rounding.
        for key in ("auroc", "synthetic_auroc", "f1"):
            assert row[key] == pytest.approx(single["models"][name][key], abs=2e-4)


def test_learning_rate_is_a_grid_axis_and_each_row_equals_the_single_run(tmp_path):
    base = ExperimentConfig(epochs=1, models=("vae",), **SIZES,
                            anomaly_fraction=0.1, checkpoint_every=0, tensorboard=False)
    grid = SweepConfig(betas=(2.0,), seeds=(0,), classes=(1,), learning_rates=(1e-3, 1e-2),
                       base=dataclasses.replace(base, output_dir=str(tmp_path / "s")))
    result = run_grid(grid, kind="sweep")
    assert sorted((r["model"], r["learning_rate"]) for r in result["rows"]) == [
        ("vae", 1e-3), ("vae", 1e-2)]
    assert {"VAE b=2 lr=0.001", "VAE b=2 lr=0.01"} <= set(result["summary"])
    single = run_single(dataclasses.replace(base, beta=2.0, normal_class=1, learning_rate=1e-2,
                                            output_dir=str(tmp_path / "r")))  # fmt: skip
    for row in (r for r in result["rows"] if r["learning_rate"] == 1e-2):
        for key in ("auroc", "synthetic_auroc"):  # An injected vs a constant rate: rounding.
            assert row[key] == pytest.approx(single["models"][row["model"]][key], abs=2e-4)
        np.testing.assert_allclose(row["history"]["total"],
                                   single["models"][row["model"]]["history"]["total"], rtol=1e-4)
    # The two rates trained different models.
    vae = [r["history"]["total"][0] for r in result["rows"]]
    assert abs(vae[0] - vae[1]) > 1.0


def test_csv_json_and_summary_agree(sweep):
    _, out, result = sweep
    assert {
        "sweep.json",
        "sweep.csv",
        "summary.txt",
        "auroc_vs_beta.png",
        "best_per_class.png",
    } <= set(os.listdir(out))
    record = json.loads((out / "sweep.json").read_text())
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(record["rows"]) == 2 * (2 + 4)  # (2 AE + 2 betas x 2 seeds) x 2.
    for csv_row, json_row in zip(rows, record["rows"], strict=True):
        assert csv_row["model"] == json_row["model"]
        assert (csv_row["beta"] or None) == (
            None if json_row["beta"] is None else str(json_row["beta"])
        )
        assert int(csv_row["seed"]) == json_row["seed"]
        assert int(csv_row["normal_class"]) == json_row["normal_class"]
        assert float(csv_row["smoothing"]) == json_row["smoothing"]
        for key in ("auroc", "auprc", "f1", "synthetic_auroc"):
            assert float(csv_row[key]) == pytest.approx(json_row[key], rel=1e-12)
    for smoothing in (0.0, 1.5):
        vae1 = [
            r["auroc"]
            for r in record["rows"]
            if (r["model"], r["beta"], r["smoothing"]) == ("vae", 1.0, smoothing)
        ]
        mean, std = record["summary"][f"VAE b=1 s={smoothing:g}"]["mean"]
        assert mean == pytest.approx(np.mean(vae1)) and std == pytest.approx(np.std(vae1))
    summary_text = (out / "summary.txt").read_text()
    assert summary_text.split()[:4] == ["AUROC", "mean+-std", "digit", "1"]  # Named columns.
    assert "VAE b=4 s=1.5" in summary_text and "synth AUROC" in summary_text
    synthetic = report.summarize(record["rows"], metric="synthetic_auroc")
    chosen = max(synthetic, key=lambda label: synthetic[label]["mean"][0])
    assert f"selected by synthetic AUROC (normal data only): {chosen} " in summary_text


def test_parse_lists():
    assert parse_list("0-9", name="digits") == tuple(range(10))
    assert parse_list("2-4,7", name="digits") == (2, 3, 4, 7)
    assert parse_list("0.5,1,2", name="betas", item=float) == (0.5, 1.0, 2.0)
    for bad in ("", "a", "1,1", "3-x"):
        with pytest.raises(ConfigError):
            parse_list(bad, name="digits")
    with pytest.raises(ConfigError, match="--betas must be a comma list of numbers"):
        parse_list("1,abc", name="betas", item=float)
    with pytest.raises(ConfigError, match="--seeds must be integers or ranges like 0-9"):
        parse_list("1,x", name="seeds")
    assert parse_classes("Sandal,1-2", name="classes", dataset="fashion_mnist") == (5, 1, 2)
    with pytest.raises(ConfigError, match="--digits"):  # A range's end, named by its flag.
        parse_classes("0-10", name="digits", dataset="mnist")
    with pytest.raises(ConfigError, match="--classes must be a class index 0-9 or one of 0, 1"):
        parse_classes("Hat", name="classes", dataset="mnist")


BAD_SWEEPS = [
    (dict(betas=(-1.0,)), "--betas must be >= 0"),
    (dict(betas=(float("nan"),)), "--betas must be a finite number"),
    (dict(seeds=(-1,)), "--seeds"),
    (dict(classes=(10,)), "--classes"),
    (dict(classes=()), "--classes needs at least one value"),
    (dict(group_size=-1), "--group_size"),
    (dict(mesh_layout="rows"), "--mesh_layout"),
    (dict(smoothings=(1.0, -1.0)), "--score_smoothing"),
    (dict(base=ExperimentConfig(epochs=0)), "--epochs"),
    (dict(smoothings=(1.0,), base=ExperimentConfig(vae_score="elbo")), "--score_smoothing needs"),
]


@pytest.mark.parametrize("fields,needle", BAD_SWEEPS, ids=[str(f) for f, _ in BAD_SWEEPS])
def test_sweep_rules_name_their_flag(fields, needle):
    from experiments.config import validate_sweep  # noqa: PLC0415

    with pytest.raises(ConfigError, match=needle):
        validate_sweep(SweepConfig(**fields))


@pytest.mark.parametrize("args,needle", [  # The list rules: test_parse_lists, in-process.
    (["--betas=1,abc"], "--betas"),
    (["--grid=imports=1"], "no selected model reads 'imports'"),  # A setting, not an axis.
    (["--beta=2"], "beta"),  # The sweep takes --betas, not --beta.
    (["--dataset=fashion_mnist", "--digits=1"], "--digits is for MNIST"),
])  # fmt: skip
def test_invalid_sweep_flags_exit_with_one_line(args, needle, tmp_path):
    line = one_line_error(cli("sweep", *args, f"--output_dir={tmp_path / 'out'}"))
    assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_a_grid_of_classes_compiles_one_epoch_per_model_kind_and_resumes_to_the_same_rows(
    tmp_path,
):
    import shutil  # noqa: PLC0415

    from benchmarks.accelerator import counting_compiles  # noqa: PLC0415

    out = tmp_path / "s"
    base = ExperimentConfig(epochs=2, models=("ae", "vae"), checkpoint_every=1, **SIZES,
                            anomaly_fraction=0.1, output_dir=str(out))
    config = SweepConfig(betas=(1.0,), seeds=(0,), classes=(1, 7), base=base)
    jax.clear_caches()  # Programs this worker built before (equal models share them).
    with counting_compiles() as built:
        full = run_grid(config, kind="sweep")["rows"]
    # Digit 7 padded to digit 1's size: per model kind one program, built (compiled, or
    # loaded from the tests' shared cache) for digit 1 and reused for digit 7.
    assert len([how for name, how in built if name == "jit(train_epoch)"]) == 2, built
    strip = ("train_seconds", "compile_seconds", "images_per_second")

    def same(rows):
        return [{k: v for k, v in r.items() if k not in strip} for r in rows]

    # ... and digit 7 trains as it does alone, to the last bit.
    alone = run_grid(dataclasses.replace(config, classes=(7,), base=dataclasses.replace(
        base, output_dir=str(tmp_path / "7"), checkpoint_every=0)), kind="sweep")["rows"]
    assert same(alone) == same(r for r in full if r["normal_class"] == 7)
    # Simulate a kill during digit 7's second VAE epoch: no results, its last checkpoint gone.
    (out / "sweep.json").unlink()
    shutil.rmtree(out / "checkpoints" / "digit7_vae" / "2")
    resumed = run_grid(load_config(str(out), flag="resume"), kind="sweep", resume=True)["rows"]
    assert same(resumed) == same(full)
    with pytest.raises(ConfigError, match="complete"):
        run_grid(load_config(str(out), flag="resume"), kind="sweep", resume=True)


def test_selection_rules_across_datasets():
    from experiments import select  # noqa: PLC0415

    def summary(means):
        return {label: {"mean": (m, 0.0), "classes": {0: (m, 0.0)}} for label, m in means.items()}

    mnist = (summary({"AE e30": 0.96, "VAE b=1 s=1 e60": 0.98}),  # (test, synthetic)
             summary({"AE e30": 0.90, "VAE b=1 s=1 e60": 0.80}))  # fmt: skip
    fashion = (summary({"AE e30": 0.93, "VAE b=1 s=1 e60": 0.90}),
               summary({"AE e30": 0.70, "VAE b=1 s=1 e60": 0.75}))  # fmt: skip
    picks = select.select({"mnist": mnist, "fashion_mnist": fashion})
    assert picks["mnist"]["transfer"] == "AE e30"  # Fashion-MNIST's best test AUROC.
    assert picks["fashion_mnist"]["transfer"] == "VAE b=1 s=1 e60"  # MNIST's.
    assert picks["mnist"]["synthetic"] == "AE e30"
    assert picks["fashion_mnist"]["synthetic"] == "VAE b=1 s=1 e60"
    assert picks["mnist"]["oracle (own test labels, an upper bound)"] == "VAE b=1 s=1 e60"
    assert picks["other datasets"]["best mean test AUROC over both"] == "AE e30"  # .945 > .94


def test_the_within_dataset_rule_sees_no_task_of_the_class_it_picks_for():
    from experiments import select  # noqa: PLC0415

    simple = {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "residual"}
    fused = {**simple, "score": "rapp"}

    def row(candidate, task, validation, auroc, seed=0):
        return {"model": candidate["model"], "beta": candidate["beta"], "seed": seed,
                "normal_class": task, "smoothing": 1.0, "score": candidate["score"],
                "auroc": auroc, "validation": {str(k): v for k, v in validation.items()}}

    # Three classes. The fused candidate is far better on every task's class-2 anomalies, and
    # slightly worse otherwise: only the decision for class 2 excludes them.
    rows = []
    for task in range(3):
        others = [k for k in range(3) if k != task]
        rows.append(row(simple, task, {k: 0.90 for k in others}, 0.5 + task / 10))
        rows.append(row(fused, task, {k: 0.99 if k == 2 else 0.89 for k in others}, 0.9))
    result = select.within({60: rows}, candidates=(simple, fused))
    # Class 0: tasks 1 (anomaly 2 only: .90 vs .99) and 2 (anomaly 1: .90 vs .89): the fused
    # one is best (.94 vs .90). Class 1: tasks 0 (.90 vs .99) and 2 (.90 vs .89): the same.
    # Class 2: tasks 0 and 1, anomalies 1 and 0 only: .90 vs .89, the simple one.
    assert result["validation"][0] == pytest.approx([0.90, 0.94])
    assert result["validation"][2] == pytest.approx([0.90, 0.89])
    assert result["picks"] == {0: 1, 1: 1, 2: 0}
    assert result["headline"] == {0: [0.9], 1: [0.9], 2: [0.7]}
    # Within one standard error of the best, the simpler candidate. The fused one scores .89,
    # .93, .93 on tasks 0, 1, 2, the simple one .90 on each: for class 0 (tasks 1, 2: .93
    # with no spread) the fused; for classes 1 and 2 (.91 +- .02 / sqrt 2) the simple one.
    close = [row(simple, t, {k: 0.90 for k in range(3) if k != t}, 0.5) for t in range(3)] + [
        row(fused, t, {k: (0.89, 0.93, 0.93)[t] for k in range(3) if k != t}, 0.9)
        for t in range(3)]
    assert select.within({60: close}, candidates=(simple, fused))["picks"] == {0: 1, 1: 0, 2: 0}


def test_the_second_decision_puts_each_classs_first_pick_first_in_its_pool():
    from experiments import select  # noqa: PLC0415

    base = {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0}
    a, b, new = ({**base, "score": s} for s in ("residual", "shift", "residual_geom"))

    def row(candidate, task, value, auroc):
        return {"model": "ae", "beta": None, "seed": 0, "normal_class": task, "smoothing": 1.0,
                "score": candidate["score"], "auroc": auroc,
                "validation": {str(k): value for k in range(3) if k != task}}

    # Validation means: a .90, b .95 and the new candidate .93 on every task (no spread).
    rows = [row(c, t, v, au) for t in range(3)
            for c, v, au in ((a, 0.90, 0.1), (b, 0.95, 0.2), (new, 0.93, 0.3))]  # fmt: skip
    result = select.within({60: rows}, [new], incumbents={0: a, 1: b, 2: a})
    assert result["pools"] == {0: [a, new], 1: [b, new], 2: [a, new]}
    # Classes 0 and 2: the new candidate beats a by more than its standard error (0); class 1:
    # b, its first pick, is the best.
    assert result["picks"] == {0: 1, 1: 0, 2: 1}
    assert result["headline"] == {0: [0.3], 1: [0.2], 2: [0.3]}


def test_a_sweep_scores_each_task_on_the_other_classes_training_images(tmp_path):
    from experiments import select  # noqa: PLC0415

    base = ExperimentConfig(epochs=1, models=("ae",), checkpoint_every=0, **SIZES,
                            anomaly_fraction=0.1, output_dir=str(tmp_path / "s"))
    grid = SweepConfig(betas=(1.0,), seeds=(0,), classes=(1, 7), smoothings=(1.0,),
                       scores=("residual", "rapp"), validation_images=20, base=base)
    rows = run_grid(grid, kind="sweep")["rows"]
    for r in rows:  # Every other class of MNIST, none of the normal one.
        assert sorted(map(int, r["validation"])) == [k for k in range(10) if k !=
                                                     r["normal_class"]]
        assert all(0 <= v <= 1 for v in r["validation"].values())
    candidates = [{"model": "ae", "beta": None, "epochs": 1, "smoothing": 1.0, "score": s}
                  for s in ("residual", "rapp")]
    result = select.within(select.load_rows([str(tmp_path / "s")]), candidates=candidates)
    assert set(result["picks"]) == {1, 7}
    by_score = {(r["normal_class"], r["score"]): r["auroc"] for r in rows}
    for c, i in result["picks"].items():
        assert result["headline"][c] == [by_score[(c, candidates[i]["score"])]]


def test_the_presets_picks_are_the_rules_picks_on_the_committed_grids():
    from experiments import select  # noqa: PLC0415
    from experiments.config import (  # noqa: PLC0415
        GEOM_PICKS,
        WITHIN_PICKS,
        candidate_settings,
        preset_values,
    )

    folders = {"mnist": ("within_e60", "geom_e60"),
               "fashion_mnist": ("fmnist_within_e60", "fmnist_geom_e60")}  # fmt: skip
    results = os.path.join(os.path.dirname(__file__), "..", "experiments", "results")
    for dataset, picks in WITHIN_PICKS.items():
        first, second = select.decisions(select.load_rows(
            [os.path.join(results, f) for f in folders[dataset]]))  # fmt: skip
        assert tuple(first["picks"][c] for c in range(10)) == picks, dataset
        assert tuple(second["picks"][c] for c in range(10)) == GEOM_PICKS[dataset], dataset
        for c in range(10):  # --preset=best runs the second decision's pick.
            assert preset_values("best", dataset, c) == candidate_settings(
                second["pools"][c][second["picks"][c]])


@pytest.mark.slow
def test_sweep_preset_trains_the_rules_pool(tmp_path):
    from experiments.config import preset_values  # noqa: PLC0415

    proc = cli("sweep", "--preset=best", "--digits=1", "--seeds=0", "--epochs=1",
               "--hidden_dims=32", "--anomaly_fraction=0.1", "--checkpoint_every=0",
               "--validation_images=5", f"--output_dir={tmp_path / 's'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    preset = preset_values("best", "mnist")
    assert config["models"] == list(preset["models"]) and config["epochs"] == 1  # Flag wins.
    assert config["smoothings"] == [preset["score_smoothing"]]
    assert config["scores"] == preset["score"].split(",")
    assert config["validation_images"] == 5  # Flag wins.
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"]
    assert all(len(r["validation"]) == 9 for r in rows)


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}  # fmt: skip


def test_resuming_a_run_as_a_sweep_or_a_sweep_as_a_run_is_refused(sweep, tmp_path):
    run = tmp_path / "run"
    run_single(ExperimentConfig(epochs=1, models=("ae",), **SIZES,
                                anomaly_fraction=0.1, normal_class=1, output_dir=str(run)))
    before = _snapshot(run)
    line = one_line_error(cli("sweep", f"--resume={run}"))
    assert "holds a single run" in line and "experiments.main --resume" in line, line
    assert _snapshot(run) == before  # Byte for byte: nothing written, nothing removed.
    with pytest.raises(ConfigError, match="holds a sweep or baselines run, not a single run"):
        load_config(str(sweep[1]), flag="resume", single=True)


def test_one_class_sweep_plots_keep_every_label_and_title_inside_the_image(sweep):
    from experiments import plots  # noqa: PLC0415

    _, out, result = sweep  # One class: the smallest figures.
    labels = tuple(f"digit {i}" for i in range(10))
    for figure in (plots.auroc_vs_beta(result["summary"], labels),
                   plots.best_per_class(result["summary"], labels)):  # fmt: skip
        figure.canvas.draw()
        renderer, box = figure.canvas.get_renderer(), figure.bbox
        texts = [t for t in figure.findobj(plots.plt.Text) if t.get_visible() and t.get_text()]
        assert len(texts) > 5
        # Everything drawn (titles, labels, legends, the tick labels of ticks in view; not
        # the labels matplotlib keeps for ticks outside the limits) lies inside the image.
        drawn = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)
        assert (drawn.x0 >= box.x0 - 0.5 and drawn.x1 <= box.x1 + 0.5 and
                drawn.y0 >= box.y0 - 0.5 and drawn.y1 <= box.y1 + 0.5), drawn
        plots.plt.close(figure)
