"""Sweeps: vmapped grid equals one-by-one training; CSV/JSON agree; bad flags."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import runner, sweeps
from experiments.config import (
    ConfigError,
    ExperimentConfig,
    SweepConfig,
    load_sweep_config,
    parse_float_list,
    parse_int_list,
)
from jax_vae import data, metrics, models, scoring, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    config = SweepConfig(
        betas=(1.0, 4.0),
        seeds=(0, 1),
        digits=(0,),
        smoothings=(0.0, 1.5),
        base=ExperimentConfig(epochs=1, models=("ae", "vae"), output_dir=str(out)),
    )
    return config, out, sweeps.run_sweep(config, out=open(os.devnull, "w"))


def test_sweep_equals_models_trained_one_by_one(sweep, split0):
    config, _, result = sweep
    vae_rows = [r for r in result["rows"] if r["model"] == "vae"]
    assert len(vae_rows) == 8  # 2 betas x 2 seeds x 2 smoothings.
    model = models.make_model("vae")
    synthetic = data.synthetic_anomalies(split0.val_images, seed=0)
    for (beta, seed), rows in itertools.groupby(
        sorted(vae_rows, key=lambda r: (r["beta"], r["seed"])), key=lambda r: (r["beta"], r["seed"])
    ):
        train_key, _ = runner.model_keys(seed, "vae")
        single = train.train(train_key, split0.train_images, model=model, beta=beta, epochs=1)
        for row in rows:  # Each smoothing scores the same trained model.
            score_fn = scoring.make_score_fn(model, smoothing=row["smoothing"])
            val = scoring.score(single.params, split0.val_images, score_fn=score_fn)
            test = scoring.score(single.params, split0.test_images, score_fn=score_fn)
            threshold = metrics.threshold_from_normals(val, percentile=95)
            m = metrics.detection_metrics(split0.test_labels, test, threshold=threshold)
            assert row["auroc"] == pytest.approx(m.auroc, abs=1e-4)
            assert row["threshold"] == pytest.approx(m.threshold, rel=1e-3)
            synthetic_scores = scoring.score(single.params, synthetic, score_fn=score_fn)
            assert row["synthetic_auroc"] == pytest.approx(
                metrics.separation_auroc(val, synthetic_scores), abs=1e-4
            )
    # The four models differ (beta and seed both matter), and so do the smoothings.
    assert len({round(r["auroc"], 6) for r in vae_rows}) == 8


def test_sweep_seed_equals_runner_run(sweep, tmp_path):
    # With split_seed == seed, a grid point reproduces `experiments.main` for that seed.
    config, _, result = sweep
    single = runner.run_experiment(
        dataclasses.replace(
            config.base, beta=4.0, seed=0, score_smoothing=1.5, output_dir=str(tmp_path / "r")
        ),
        out=open(os.devnull, "w"),
    )
    for name, beta in (("ae", None), ("vae", 4.0)):
        row = next(
            r
            for r in result["rows"]
            if (r["model"], r["beta"], r["seed"], r["smoothing"]) == (name, beta, 0, 1.5)
        )
        for key in ("auroc", "synthetic_auroc"):
            assert row[key] == pytest.approx(single["models"][name][key], abs=1e-4)


def test_csv_json_and_summary_agree(sweep):
    _, out, result = sweep
    assert {
        "sweep.json",
        "sweep.csv",
        "summary.txt",
        "auroc_vs_beta.png",
        "best_per_digit.png",
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
        assert (
            int(csv_row["seed"]) == json_row["seed"] and int(csv_row["digit"]) == json_row["digit"]
        )
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
    assert "VAE b=4 s=1.5" in summary_text and "synth AUROC" in summary_text
    synthetic = sweeps.summarize(record["rows"], metric="synthetic_auroc")
    chosen = max(synthetic, key=lambda label: synthetic[label]["mean"][0])
    assert sweeps.select_by_synthetic_auroc(record["rows"]) == chosen
    assert f"selected by synthetic AUROC (normal data only): {chosen} " in summary_text


def test_parse_lists():
    assert parse_int_list("0-9", name="digits") == tuple(range(10))
    assert parse_int_list("2-4,7", name="digits") == (2, 3, 4, 7)
    assert parse_float_list("0.5,1,2", name="betas") == (0.5, 1.0, 2.0)
    for bad in ("", "a", "1,1", "3-x"):
        with pytest.raises(ConfigError):
            parse_int_list(bad, name="digits")
    with pytest.raises(ConfigError):
        parse_float_list("1,abc", name="betas")


BAD_SWEEP_FLAGS = [
    (["--betas=1,abc"], "--betas"),
    (["--betas=-1"], "--betas"),
    (["--betas=nan"], "--betas"),
    (["--seeds=0,x"], "--seeds"),
    (["--digits=0-10"], "--digits"),
    (["--digits="], "--digits"),
    (["--group_size=-1"], "--group_size"),
    (["--epochs=0"], "--epochs"),
    (["--batch_size=5000"], "--batch_size"),
    (["--models=svm"], "--models"),
    (["--beta=2"], "beta"),  # The sweep takes --betas, not --beta.
    (["--score_smoothing=1,-1"], "--score_smoothing"),
    (["--score_smoothing=1", "--vae_score=elbo"], "--score_smoothing"),
]


@pytest.mark.parametrize(
    "args,needle", BAD_SWEEP_FLAGS, ids=[" ".join(a) for a, _ in BAD_SWEEP_FLAGS]
)
def test_invalid_sweep_flags_exit_with_one_line(args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args, f"--output_dir={tmp_path / 'out'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_interrupted_sweep_resumes_to_the_same_rows(tmp_path):
    import shutil

    out = tmp_path / "s"
    config = SweepConfig(
        betas=(1.0,), seeds=(0, 1), digits=(1, 7),
        base=ExperimentConfig(epochs=3, models=("vae",), checkpoint_every=1, output_dir=str(out)),
    )  # fmt: skip
    full = sweeps.run_sweep(config, out=open(os.devnull, "w"))["rows"]
    # Simulate a kill during digit 7's third epoch: no results, its last checkpoint gone.
    (out / "sweep.json").unlink()
    shutil.rmtree(out / "checkpoints" / "digit7_vae" / "3")
    resumed = sweeps.run_sweep(load_sweep_config(str(out)), resume=True,
                               out=open(os.devnull, "w"))["rows"]  # fmt: skip
    assert resumed == full
    with pytest.raises(ConfigError, match="complete"):
        sweeps.run_sweep(load_sweep_config(str(out)), resume=True)
