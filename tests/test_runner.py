"""A single run: end-to-end on real MNIST, output files, refusals, every flag rule."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from helpers import ROOT, cli, fashion_mnist_dir, one_line_error, run_single

from experiments import report
from experiments.config import ConfigError, ExperimentConfig, validate

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
    "held_out",
    "fpr_low",
    "fpr_high",
    "train_seconds",
    "compile_seconds",
    "images_per_second",
    "microbatches",
    "history",
    "health",
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digit0"
    config = ExperimentConfig(beta=2.0, epochs=2, output_dir=str(out))
    return config, out, run_single(config, plots=True)


def test_end_to_end_files_and_schema(e2e):
    config, out, result = e2e
    for name in ("metrics.json", "scores.npz", "config.json", "results.txt", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # No temp files left.
    assert sorted(os.listdir(out / "checkpoints" / "digit0_vae")) == ["2"]  # The final epoch.
    record = json.loads((out / "metrics.json").read_text())
    assert set(record) == {"config", "models", "timings", "recommended"}
    # Where the run's time went: measured phases that add up to the total.
    timings = record["timings"]
    assert {"data", "compile", "train", "scoring", "metrics", "plots", "files"} <= set(timings)
    assert all(v >= 0 for k, v in timings.items() if k != "other"), timings
    assert timings["train"] == pytest.approx(
        sum(m["train_seconds"] for m in record["models"].values()), abs=2e-3)
    assert sum(v for k, v in timings.items() if k != "total") == pytest.approx(
        timings["total"], abs=0.01)
    cfg = record["config"]
    for field in dataclasses.fields(ExperimentConfig):
        assert field.name in cfg, field.name
    assert cfg["beta"] == 2.0 and cfg["epochs"] == 2
    assert cfg["versions"]["jax"] and cfg["devices"] and cfg["cpu"]
    split = cfg["splits"]["0"]
    assert (split["train"], split["val"], split["test"], split["test_anomalies"]) == (
        5331, 592, 10000, 9020)
    assert len(split["fingerprint"]) == 16
    assert set(record["models"]) == {"ae", "vae"}
    for name, m in record["models"].items():
        assert set(m) == METRIC_KEYS, name
        for key in METRIC_KEYS - {"history", "health"}:
            assert math.isfinite(m[key]), (name, key)
        assert m["auroc"] > 0.9, (name, m["auroc"])
        assert len(m["history"]["total"]) == 2
    assert set(record["models"]["ae"]["history"]) == {"total", "reconstruction"}  # No KL term.
    assert set(record["models"]["vae"]["history"]) == {"total", "reconstruction", "kl"}
    assert all(k > 0 for k in record["models"]["vae"]["history"]["kl"])
    assert result["models"] == record["models"]


def test_library_reproduces_the_runner_exactly(e2e):
    # The README's functional snippet (with the run's 2 epochs) against the run's VAE.
    from jax_vae import data, keys, metrics, registry, scoring, train  # noqa: PLC0415

    split = data.one_class_split(data.load_dataset("bundled"), normal_class=0)
    model = registry.build("vae")
    train_key, score_key = keys.model_keys(0, "vae")
    result = train.train(train_key, split.train_images, {"beta": 2.0}, model=model, epochs=2)
    score_fn = model.score()
    images = scoring.Parts(
        split.val_images, split.test_images, data.synthetic_anomalies(split.val_images)
    )
    scores = scoring.score_parts(result.params, images, score_fn=score_fn, key=score_key)
    library = metrics.evaluate(split.test_labels, *scores)
    runner = e2e[2]["models"]["vae"]
    for name, value in library.items():
        assert runner[name] == value, name


def test_end_to_end_scores_file(e2e):
    _, out, result = e2e
    scores = np.load(out / "scores.npz")
    parts = ("test", "val", "synthetic")
    assert set(scores.files) == {
        "labels",
        "classes",
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
        run_single(config)
    assert snapshot() == before


def test_batch_larger_than_training_set_is_refused(tmp_path):
    config = ExperimentConfig(batch_size=6000, epochs=1, output_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=re.escape(
            "--batch_size must be in [1, 5331] (the training set has 5331 images), got 6000 "
            "(digit 0)")):
        run_single(config)
    assert not (tmp_path / "x").exists()


def test_default_output_dir_is_new(tmp_path, monkeypatch):
    from experiments import pipeline  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    grid = pipeline.SweepConfig.single(ExperimentConfig(beta=2.0, normal_class=3))
    first = pipeline.default_output_dir("run", grid)
    assert first.startswith("runs/") and first.endswith("_digit3_beta2")
    os.makedirs(first)
    assert pipeline.default_output_dir("run", grid) != first


def test_a_user_folder_run_is_named_after_its_folder_and_models(tmp_path, monkeypatch):
    from experiments import pipeline  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)

    def name(**settings):
        return pipeline.default_output_dir("run", pipeline.SweepConfig.single(
            ExperimentConfig(**settings)))

    assert name(dataset="folder", data_dir="/data/my_parts/", models=("ae",)).endswith(
        "_my_parts_ae")  # No beta where no model reads one.
    assert name(dataset="arrays", data_dir="x/scans.npz", beta=2.0).endswith("_scans_ae-vae_beta2")
    assert name(models=("ae",), normal_class=3).endswith("_digit3_ae")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"--data_dir {missing} does not exist"):
        validate(ExperimentConfig(dataset="folder", data_dir=missing))


def test_every_plot_of_a_run_labels_its_axes(small_run):
    """The figures a run writes, rebuilt from its files: every panel with data names both
    axes (the images and the anomaly maps, which are pictures, have none)."""
    import json  # noqa: PLC0415

    from experiments import plots  # noqa: PLC0415

    record = json.loads((small_run / "metrics.json").read_text())["models"]
    saved = np.load(small_run / "scores.npz")
    test = {name: saved[f"{name}_test"] for name in record}
    figures = [plots.score_histograms(saved["labels"], test,
                                      {n: r["threshold"] for n, r in record.items()}),
               plots.roc_curves(saved["labels"], test, {n: r["auroc"] for n, r in record.items()}),
               plots.training_curves({n: r["history"] for n, r in record.items()})]  # fmt: skip
    for figure in figures:
        for ax in figure.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), figure)


BAD_CONFIGS = [
    (dict(beta=-1.0), "--beta must be >= 0"),
    (dict(beta=float("nan")), "--beta must be a finite number"),
    (dict(preset="fastest"), "--preset"),
    (dict(score_smoothing=-1.0), "--score_smoothing"),
    (dict(score_smoothing=1.0, vae_score="iwae"), "--score_smoothing needs a reconstruction"),
    (dict(normal_class=10), "--normal_class"),
    (dict(latent_dim=0), "--latent_dim"),
    (dict(hidden_dims=()), "--hidden_dims"),
    (dict(epochs=0), "--epochs"),
    (dict(batch_size=0), "--batch_size"),
    (dict(learning_rate=float("nan")), "--learning_rate"),
    (dict(learning_rate=0.0), "--learning_rate must be > 0"),
    (dict(seed=-1), "--seed"),
    (dict(split_seed=2**32), "--split_seed must be in [0, 4294967296), got 4294967296"),
    (dict(val_fraction=1.0), "--val_fraction"),
    (dict(anomaly_fraction=1.5), "--anomaly_fraction"),
    (dict(threshold_percentile=0.0), "--threshold_percentile"),
    (dict(models=("ae", "gan")), "--models"),
    (dict(models=("ae", "ae")), "--models lists a value twice"),
    (dict(models=()), "--models must name at least one"),
    (dict(data_source="web"), "--data_source"),
    (dict(dataset="cifar10"), "--dataset"),
    (dict(dataset="fashion_mnist", data_source="bundled"), "only mnist is"),
    (dict(data_source="idx"), "--data_dir"),
    (dict(vae_score="max"), "--vae_score"),
    (dict(mc_samples=0), "--mc_samples"),
    (dict(chunk_size=0), "--chunk_size"),
    (dict(likelihood="poisson"), "--likelihood"),
    (dict(architecture="rnn"), "--architecture"),
    (dict(architecture="conv", hidden_dims=(8, 16, 32, 64, 128)), "architecture conv halves"),
    (dict(kl_warmup_epochs=-1), "--kl_warmup_epochs"),
    (dict(ensemble_size=0), "--ensemble_size"),
    (dict(checkpoint_every=-1), "--checkpoint_every"),
    (dict(num_devices=-1), "--num_devices"),
]


@pytest.mark.parametrize("fields,needle", BAD_CONFIGS, ids=[str(f) for f, _ in BAD_CONFIGS])
def test_every_rule_names_its_flag(fields, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(ExperimentConfig(**fields))


def test_output_dir_rules(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for path, needle in ((a_file, "is not a directory"), (a_file / "run", "cannot be created")):
        with pytest.raises(ConfigError, match=needle):
            validate(ExperimentConfig(output_dir=str(path)))


def test_unwritable_output_dir_fails_before_the_data(tmp_path, monkeypatch):
    # /proc passes every static check as root, but nothing can be made in it.
    from jax_vae import data  # noqa: PLC0415

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ConfigError, match="--output_dir /proc/forbidden/run cannot be written"):
        run_single(ExperimentConfig(epochs=1, output_dir="/proc/forbidden/run"))


def test_val_fraction_holding_out_nothing_names_the_smallest_that_works(tmp_path, monkeypatch):
    from jax_vae import train  # noqa: PLC0415

    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("training started"))
    config = ExperimentConfig(val_fraction=5e-5, output_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"--val_fraction 5e-05 holds out no image of class 0 "
                                          r"\(5923 training images\); use at least 0.0002"):
        run_single(config)
    assert not (tmp_path / "r").exists()  # Nothing was written: no empty folder left.
    # The named value does work: one image is held out.
    assert round(0.0002 * 5923) >= 1


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    bad_flagfile = tmp_path_factory.mktemp("bad") / "bad.flags"
    bad_flagfile.write_text("--epochs=1\n--normal_class=42\n")
    return {"flagfile": str(bad_flagfile)}


# Bad flags through the real command: one line, exit code 1, and fast when no data is needed.
# (The rules themselves are tested in-process: test_every_rule_names_its_flag, test_data.)
BAD_FLAGS = [
    (["--beta=-1"], "--beta", True),  # A rule of the configuration.
    (["--hidden_dims=400,x"], "--hidden_dims", True),  # A flag's conversion.
    (["--no_such_flag=1"], "no_such_flag", True),  # absl's parser.
    (["positional"], "unexpected arguments", True),
    (["--flagfile={flagfile}"], "--normal_class", True),
    (["--resume=r", "--eval_only=r"], "exclude each other", True),
    (["--dataset=fashion_mnist", "--normal_digit=3"], "--normal_digit is for MNIST", True),
    # Needs the split: the rule is checked once the data is loaded (the data's own errors,
    # a truncated or missing file, take the same path: test_data).
    (["--batch_size=100000"], "--batch_size must be in [1, 5331]", False),
]


@pytest.mark.parametrize("args,needle,fast", BAD_FLAGS, ids=[" ".join(a) for a, _, _ in BAD_FLAGS])
def test_invalid_flags_exit_with_one_line(args, needle, fast, bad_inputs, tmp_path):
    args = [a.format(**bad_inputs) for a in args]
    if not any(a.startswith("--output_dir") for a in args):
        args.append(f"--output_dir={tmp_path / 'out'}")
    start = time.perf_counter()
    line = one_line_error(cli("main", *args))
    assert needle in line, line
    if fast:  # Flags are checked before JAX, the data or the runner are imported.
        assert time.perf_counter() - start < 5
    assert not (tmp_path / "out").exists()


def test_help_lists_the_commands_own_flags():
    proc = cli("main", "--help")
    assert proc.returncode == 0, proc.stderr  # Help asked for is no error.
    main_help = proc.stdout
    for flag in ("--beta", "--seed", "--split_seed", "--epochs", "--resume", "--eval_only",
                 "--output_dir", "--models"):  # fmt: skip
        assert f"  {flag}:" in main_help, flag
    assert "--test_srcdir" not in main_help and "--xla" not in main_help  # No library flags.
    sweep_help = cli("sweep", "--help").stdout
    for flag in ("--betas", "--seeds", "--epochs", "--models", "--split_seed"):
        assert f"  {flag}:" in sweep_help, flag
    assert "  --beta:" not in sweep_help


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
    assert passes(os.path.join(ROOT, "jax_vae", "train", "driver.py"), std_logging.INFO)
    assert passes(os.path.join(os.sep, "src", "orbax_notes.py"), std_logging.INFO)


@pytest.mark.slow
def test_preset_sets_defaults_and_explicit_flags_override(tmp_path, monkeypatch):
    """One command: --preset=best on Fashion-MNIST's Ankle boot (MNIST where its files are
    missing), with --verbosity=0 (the libraries' INFO lines too)."""
    from experiments import pipeline  # noqa: PLC0415
    from experiments.config import (  # noqa: PLC0415
        WITHIN_PICKS,
        SweepConfig,
        preset_values,
    )

    fashion = fashion_mnist_dir()
    dataset, label = ("fashion_mnist", "ankle boot") if fashion else ("mnist", "1")
    out = tmp_path / "run"
    proc = cli("main", "--preset=best", f"--dataset={dataset}", f"--normal_class={label}",
               "--epochs=1", "--hidden_dims=32", "--anomaly_fraction=0.1", "--verbosity=0",
               *([f"--data_dir={fashion}"] if fashion else []), f"--output_dir={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "best" and config["epochs"] == 1  # Explicit flag wins.
    preset = preset_values("best", dataset, config["normal_class"])  # The class's pick.
    for name, value in preset.items():
        if name != "epochs":
            assert config[name] == (list(value) if isinstance(value, tuple) else value), name
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["models"]) == set(preset["models"])
    # The table says what produced it, and a default folder is named after the preset.
    first = (out / "results.txt").read_text().splitlines()[0]
    assert first.startswith(f"preset best on {dataset}: {','.join(preset['models'])}"), first
    assert f"score smoothing {preset['score_smoothing']:g}" in first
    assert "orbax" in proc.stderr and "epoch 1/1" in proc.stderr  # --verbosity=0: all INFO.
    monkeypatch.chdir(tmp_path)
    grid = SweepConfig.single(ExperimentConfig(preset="best"))
    folder = pipeline.default_output_dir("run", grid)
    assert folder.endswith("_digit0_preset-best"), folder
    # A benchmark's class has the within-dataset rules' pick (tests/test_sweeps.py), a grid
    # the rules' whole pool (scored on the validation tasks too); other data the robust preset.
    for name in WITHIN_PICKS:
        assert preset_values("best", name)["validation_images"] > 0
    assert preset_values("best", "kmnist") == preset_values("best", "folder")
    assert preset_values("best", "arrays")["models"] == ("ae", "vae")
    assert preset_values(None, "mnist") == {} == preset_values("fastest", "mnist")
    if not fashion:
        return
    # A class of Fashion-MNIST by its name: logged and recorded so.
    assert "Ankle boot" in proc.stderr
    assert config["normal_class"] == 9 and config["dataset"] == "fashion_mnist"
    assert config["splits"]["9"]["train"] == 5400
    # Without an explicit folder the run is named after its class, not "digit 9".
    grid = SweepConfig.single(ExperimentConfig(dataset="fashion_mnist", normal_class=9))
    assert pipeline.default_output_dir("run", grid).endswith("_fashion_mnist-ankle-boot_beta1")


def test_the_record_names_the_host_cpu_as_lscpu_does():
    # Trained numbers can differ in their last bits between CPUs of other kinds (the README's
    # Results), so a record says which CPU made it.
    from experiments.pipeline import host_cpu  # noqa: PLC0415

    if not shutil.which("lscpu") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs Linux's lscpu")
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", out, re.M)
    flags = re.search(r"^Flags:\s*(.+)$", out, re.M)
    if not (model and flags):
        pytest.skip("lscpu names no x86 model and flags here")
    cpu, flags = host_cpu(), set(flags.group(1).split())
    assert cpu.startswith(model.group(1).strip()), cpu
    widest = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "avx"
    assert cpu.endswith(f"({widest})") == (widest in flags), (cpu, widest)


def test_results_table_columns_are_separated_and_aligned():
    result = {
        "auroc": 0.99, "auprc": 0.98, "f1": 0.97, "precision": 0.96, "recall": 0.95,
        "fpr": 0.05, "threshold": 0.0123, "synthetic_auroc": 0.9, "train_seconds": 123.45,
    }  # fmt: skip
    table = report.format_table({"ae": result, "vae": {**result, "f1": None}})
    header, _, ae, vae = table.splitlines()
    titles = [title for title, _, _ in report.TABLE_COLUMNS]
    # Titles (some with one inner space) are at least two spaces apart.
    assert [t.strip() for t in header.split("  ") if t] == ["model", *titles]

    def ends(line):  # Where each word or number ends.
        return [i + 1 for i, c in enumerate(line) if c != " " and line[i + 1 : i + 2] in ("", " ")]

    # Each number ends where its column's title ends.
    title_ends = [header.index(title) + len(title) for title in titles]
    assert ends(ae)[1:] == ends(vae)[1:] == title_ends
    assert vae.split()[3] == "-"


def test_an_unusable_compilation_cache_is_a_warning_not_an_error(tmp_path, caplog):
    from experiments import cli  # noqa: PLC0415

    assert cli._usable_folder(str(tmp_path / "new" / "xla")) and (tmp_path / "new" / "xla").is_dir()
    assert not cli._usable_folder("/proc/forbidden/xla")
    assert "cannot be written; compiling without the cache" in caplog.text


def test_the_installed_package_declares_its_license_as_an_spdx_expression():
    # A license table ({text = ...}) makes current setuptools print deprecation warnings on
    # every install; the SPDX string is written as License-Expression (core metadata 2.4).
    import importlib.metadata  # noqa: PLC0415

    assert importlib.metadata.metadata("jax-vae")["License-Expression"] == "Apache-2.0"


def test_the_run_clock_starts_when_run_sh_execs_python_not_at_its_install(monkeypatch):
    import time  # noqa: PLC0415

    from experiments.timing import process_start  # noqa: PLC0415

    assert process_start() < time.time() - 0.5  # This test process started earlier ...
    exec_time = time.time() - 0.1
    monkeypatch.setenv("JAX_VAE_EXEC_TIME", f"{exec_time:.6f}")  # ... than run.sh's exec.
    assert process_start() == pytest.approx(exec_time, abs=1e-3)
    with open(os.path.join(ROOT, "run.sh")) as f:  # And run.sh sets it.
        assert "JAX_VAE_EXEC_TIME=" in f.read()


def test_a_missing_cuda_backend_is_one_line_naming_the_extra(tmp_path):
    import jax  # noqa: PLC0415

    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a CUDA backend")
    env = {**os.environ, "JAX_PLATFORMS": "cuda"}
    line = one_line_error(cli("main", "--epochs=1", f"--output_dir={tmp_path / 'r'}", env=env))
    assert "JAX_PLATFORMS=cuda" in line and "pip install -e '.[cuda]'" in line, line
    assert not (tmp_path / "r").exists()
