"""The experiment runner: end-to-end on real MNIST, output files, refusals, bad flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import runner
from experiments.config import ConfigError, ExperimentConfig
from jax_vae.data import bundled_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOTS = (
    "roc.png",
    "score_histograms.png",
    "reconstructions.png",
    "training_curves.png",
    "latent.png",
)
METRIC_KEYS = {
    "auroc",
    "synthetic_auroc",
    "auprc",
    "f1",
    "precision",
    "recall",
    "fpr",
    "threshold",
    "train_seconds",
    "compile_seconds",
    "images_per_second",
    "history",
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digit0"
    config = ExperimentConfig(beta=2.0, epochs=2, output_dir=str(out))
    result = runner.run_experiment(config, out=open(os.devnull, "w"))
    return config, out, result


def test_end_to_end_files_and_schema(e2e):
    config, out, result = e2e
    for name in ("metrics.json", "scores.npz", "config.json", "results.txt", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # No temp files left.
    assert sorted(os.listdir(out / "checkpoints" / "vae")) == ["2"]  # The final epoch.
    record = json.loads((out / "metrics.json").read_text())
    assert set(record) == {"config", "models"}
    cfg = record["config"]
    for field in dataclasses.fields(ExperimentConfig):
        assert field.name in cfg, field.name
    assert cfg["beta"] == 2.0 and cfg["epochs"] == 2
    assert cfg["versions"]["jax"] and cfg["devices"]
    assert set(record["models"]) == {"ae", "vae"}
    for name, m in record["models"].items():
        assert set(m) == METRIC_KEYS, name
        for key in METRIC_KEYS - {"history"}:
            assert math.isfinite(m[key]), (name, key)
        assert m["auroc"] > 0.9, (name, m["auroc"])
        assert set(m["history"]) == {"total", "reconstruction", "kl"}
        assert len(m["history"]["total"]) == 2
    assert record["models"]["ae"]["history"]["kl"] == [0.0, 0.0]
    assert all(k > 0 for k in record["models"]["vae"]["history"]["kl"])
    assert result["models"] == record["models"]


def test_end_to_end_scores_file(e2e):
    _, out, result = e2e
    scores = np.load(out / "scores.npz")
    parts = ("test", "val", "synthetic")
    assert set(scores.files) == {
        "labels",
        "digits",
        *(f"{m}_{p}" for m in ("ae", "vae") for p in parts),
    }
    assert scores["labels"].shape == (10000,) and int(scores["labels"].sum()) == 9020
    assert scores["ae_val"].shape == (592,)
    # The stored scores reproduce the reported metrics.
    from jax_vae.metrics import detection_metrics, separation_auroc, threshold_from_normals

    threshold = threshold_from_normals(scores["vae_val"], percentile=95)
    m = detection_metrics(scores["labels"], scores["vae_test"], threshold=threshold)
    assert m.auroc == pytest.approx(result["models"]["vae"]["auroc"])
    assert m.f1 == pytest.approx(result["models"]["vae"]["f1"])
    assert scores["vae_synthetic"].shape == (592,)
    synthetic = separation_auroc(scores["vae_val"], scores["vae_synthetic"])
    assert synthetic == pytest.approx(result["models"]["vae"]["synthetic_auroc"])
    assert synthetic > 0.7  # Stroke-sized corruptions are visible even after 2 epochs.


def test_second_run_into_same_dir_is_refused_and_first_kept(e2e):
    config, out, _ = e2e

    def snapshot():
        return {
            os.path.join(root, name): open(os.path.join(root, name), "rb").read()
            for root, _, files in os.walk(out)
            for name in files
        }

    before = snapshot()
    assert any("checkpoints" in path for path in before)
    with pytest.raises(ConfigError, match="already holds files"):
        runner.run_experiment(config)
    assert snapshot() == before


def test_batch_larger_than_training_set_is_refused(tmp_path):
    config = ExperimentConfig(batch_size=6000, epochs=1, output_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="--batch_size 6000 is larger than the training set"):
        runner.run_experiment(config)
    assert not (tmp_path / "x").exists()


def test_default_output_dir_is_new(tmp_path):
    config = ExperimentConfig(beta=2.0, normal_digit=3)
    first = runner.default_output_dir(config, root=str(tmp_path))
    assert first.endswith("_digit3_beta2")
    os.makedirs(first)
    assert runner.default_output_dir(config, root=str(tmp_path)) != first


def _run_main(*args, timeout=120):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    a_file = base / "file.txt"
    a_file.write_text("x")
    corrupt = base / "corrupt"
    corrupt.mkdir()
    for name in os.listdir(bundled_data_dir()):
        data = open(os.path.join(bundled_data_dir(), name), "rb").read()
        (corrupt / name).write_bytes(data[: len(data) // 2] if "t10k-images" in name else data)
    empty = base / "empty"
    empty.mkdir()
    bad_flagfile = base / "bad.flags"
    bad_flagfile.write_text("--epochs=1\n--normal_digit=42\n")
    return {
        "file": str(a_file),
        "corrupt": str(corrupt),
        "empty": str(empty),
        "flagfile": str(bad_flagfile),
    }


BAD_FLAGS = [
    (["--beta=-1"], "--beta"),
    (["--preset=fastest"], "--preset"),
    (["--score_smoothing=-1"], "--score_smoothing"),
    (["--score_smoothing=1", "--vae_score=iwae"], "--score_smoothing"),
    (["--beta=nan"], "--beta"),
    (["--beta=abc"], "beta"),
    (["--normal_digit=10"], "--normal_digit"),
    (["--latent_dim=0"], "--latent_dim"),
    (["--hidden_dims=400,x"], "--hidden_dims"),
    (["--epochs=0"], "--epochs"),
    (["--batch_size=0"], "--batch_size"),
    (["--batch_size=100000"], "--batch_size"),
    (["--learning_rate=nan"], "--learning_rate"),
    (["--learning_rate=0"], "--learning_rate"),
    (["--seed=-1"], "--seed"),
    (["--val_fraction=1"], "--val_fraction"),
    (["--anomaly_fraction=1.5"], "--anomaly_fraction"),
    (["--threshold_percentile=0"], "--threshold_percentile"),
    (["--models=ae,gan"], "--models"),
    (["--data_source=web"], "--data_source"),
    (["--dataset=cifar10"], "--dataset"),
    (["--vae_score=max"], "--vae_score"),
    (["--mc_samples=0"], "--mc_samples"),
    (["--output_dir={file}"], "--output_dir"),
    (["--output_dir={file}/run"], "--output_dir"),
    (["--data_source=idx", "--data_dir={empty}"], "missing data file"),
    (["--data_source=idx", "--data_dir={corrupt}"], "t10k-images-idx3-ubyte.gz"),
    (["--flagfile={flagfile}"], "--normal_digit"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["positional"], "unexpected arguments"),
]


@pytest.mark.parametrize("args,needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_invalid_flags_exit_with_one_line(args, needle, bad_inputs, tmp_path):
    args = [a.format(**bad_inputs) for a in args]
    if not any(a.startswith("--output_dir") for a in args):
        args.append(f"--output_dir={tmp_path / 'out'}")
    proc, seconds = _run_main(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]
    assert seconds < 60
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_flagfile_run_writes_results(tmp_path):
    flagfile = tmp_path / "ae.flags"
    out = tmp_path / "run"
    flagfile.write_text(f"--models=ae\n--epochs=1\n--output_dir={out}\n")
    proc, _ = _run_main(f"--flagfile={flagfile}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AUROC" in proc.stdout.upper() and "AE" in proc.stdout
    assert "ae epoch 1/1" in proc.stderr  # Per-epoch progress is logged...
    assert "orbax" not in proc.stderr  # ...but not Orbax's checkpoint bookkeeping.
    assert os.listdir(out / "checkpoints" / "ae") == ["1"]  # Which did happen.
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["models"]) == {"ae"} and record["config"]["epochs"] == 1


def test_library_info_filter_hides_only_library_info():
    import logging as std_logging  # noqa: PLC0415

    from experiments import cli  # noqa: PLC0415

    def passes(path, level):
        record = std_logging.LogRecord("absl", level, path, 1, "message", None, None)
        return cli.LibraryInfoFilter(["orbax"]).filter(record)

    orbax_file = os.path.join(os.sep, "venv", "site-packages", "orbax", "checkpoint", "a.py")
    assert not passes(orbax_file, std_logging.INFO)
    assert not passes(orbax_file, std_logging.DEBUG)
    assert passes(orbax_file, std_logging.WARNING)
    assert passes(os.path.join(ROOT, "jax_vae", "train.py"), std_logging.INFO)
    assert passes(os.path.join(os.sep, "src", "orbax_notes.py"), std_logging.INFO)


def test_verbosity_flag_shows_library_info(tmp_path):
    proc, _ = _run_main(
        "--models=ae", "--epochs=1", "--verbosity=0", f"--output_dir={tmp_path / 'run'}",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "orbax" in proc.stderr and "ae epoch 1/1" in proc.stderr


def test_preset_sets_defaults_and_explicit_flags_override(tmp_path):
    from experiments.config import PRESETS

    out = tmp_path / "run"
    proc, _ = _run_main("--preset=best", "--epochs=1", f"--output_dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "best" and config["epochs"] == 1  # Explicit flag wins.
    for name, value in PRESETS["best"].items():
        if name != "epochs":
            assert config[name] == (list(value) if isinstance(value, tuple) else value), name
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["models"]) == set(PRESETS["best"]["models"])


def test_conv_architecture_needs_at_most_two_halvings():
    with pytest.raises(ConfigError, match="--architecture=conv"):
        runner.run_experiment(ExperimentConfig(architecture="conv", hidden_dims=(8, 16, 32)))
    with pytest.raises(ConfigError, match="--architecture"):
        runner.run_experiment(ExperimentConfig(architecture="rnn"))


def test_results_table_columns_are_separated_and_aligned():
    result = {
        "auroc": 0.99, "auprc": 0.98, "f1": 0.97, "precision": 0.96, "recall": 0.95,
        "fpr": 0.05, "threshold": 0.0123, "synthetic_auroc": 0.9, "train_seconds": 123.45,
    }  # fmt: skip
    table = runner.format_table({"ae": result, "vae": {**result, "f1": None}})
    header, _, ae, vae = table.splitlines()
    titles = [title for title, _, _ in runner.TABLE_COLUMNS]
    # Titles (some with one inner space) are at least two spaces apart.
    assert [t.strip() for t in header.split("  ") if t] == ["model", *titles]

    def ends(line):  # Where each word or number ends.
        return [i + 1 for i, c in enumerate(line) if c != " " and line[i + 1 : i + 2] in ("", " ")]

    # Each number ends where its column's title ends.
    title_ends = [header.index(title) + len(title) for title in titles]
    assert ends(ae)[1:] == ends(vae)[1:] == title_ends
    assert vae.split()[3] == "-"
