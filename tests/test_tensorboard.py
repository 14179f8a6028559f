"""TensorBoard events, read back by TensorBoard's own reader and served by the real server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest
from helpers import SIZES, SMALL_DATA, run_grid, run_single

from experiments.config import ExperimentConfig, SweepConfig, load_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

TINY = dict(**SIZES, **SMALL_DATA)


def _events(path):
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _steps(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def run(small_run):
    return small_run  # 3 epochs of an AE and a beta-VAE (beta 2), with plots (conftest).


def test_run_events_equal_its_metrics_and_history(run):
    record = json.loads((run / "metrics.json").read_text())
    assert sorted(os.listdir(run / "tensorboard")) == ["digit1", "plots"]
    for name, folder in (("ae", "ae_seed0"), ("vae", "vae_b2_seed0")):
        events, m = _events(run / "tensorboard" / "digit1" / folder), record["models"][name]
        for term in m["history"]:  # The loss terms as they come: the AE has no KL.
            steps = _steps(events, f"train/{term}")
            assert [s for s, _ in steps] == [1, 2, 3]
            np.testing.assert_allclose([v for _, v in steps], m["history"][term], rtol=1e-6)
        for metric in ("auroc", "auprc", "f1", "precision", "recall", "fpr", "threshold",
                       "synthetic_auroc"):  # fmt: skip
            ((step, value),) = _steps(events, f"final/{metric}")
            assert step == 3 and value == pytest.approx(m[metric], rel=1e-6), metric
        assert all(v > 0 for _, v in _steps(events, "train/images_per_second"))
        if name == "vae":
            assert [v for _, v in _steps(events, "train/beta")] == [2.0, 2.0, 2.0]
        content = events.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in content
    images = _events(run / "tensorboard" / "plots").Tags()["images"]
    assert sorted(images) == ["latent", "reconstructions", "roc", "score_histograms",
                              "training_curves"]  # fmt: skip


def test_a_second_writer_of_a_run_in_the_same_second_keeps_the_first_ones_events(
        tmp_path, monkeypatch):  # fmt: skip
    """A resume (or evaluation) that opens a run's writer again within the second its first
    writer opened it: tensorboardX names files by the second, so both must still be read."""
    from tensorboardX import event_file_writer  # noqa: PLC0415

    from experiments.tensorboard import Board  # noqa: PLC0415

    # The writers' clock (their file names) stands still; everything else keeps time.
    monkeypatch.setattr(event_file_writer, "time", types.SimpleNamespace(
        time=lambda: 1_800_000_000.0, sleep=time.sleep))  # fmt: skip
    for step, resume in ((1, False), (2, True)):
        board = Board(str(tmp_path), resume=resume)
        board.writer("r", step).add_scalar("train/total", float(step), step)
        board.close()
    assert [s for s, _ in _steps(_events(tmp_path / "r"), "train/total")] == [1, 2]


def test_resumed_run_continues_the_curves_without_duplicate_steps(tmp_path):
    out = tmp_path / "run"
    config = ExperimentConfig(epochs=4, checkpoint_every=2, models=("vae",), output_dir=str(out),
                              kl_warmup_epochs=4, **TINY)  # fmt: skip
    full = run_single(config)
    # As if killed in epoch 4: its events of epochs 3-4 were written, its checkpoint was not.
    (out / "metrics.json").unlink()
    shutil.rmtree(out / "checkpoints" / "digit1_vae" / "4")
    resumed = run_single(load_config(str(out), flag="resume").base, resume=True)
    assert resumed["models"]["vae"]["auroc"] == full["models"]["vae"]["auroc"]
    events = _events(out / "tensorboard" / "digit1" / "vae_b1_seed0")
    assert [s for s, _ in _steps(events, "train/total")] == [1, 2, 3, 4]
    assert [v for _, v in _steps(events, "train/beta")] == [0.25, 0.5, 0.75, 1.0]  # Warm-up.
    assert [s for s, _ in _steps(events, "final/auroc")] == [4]
    # --eval_only writes its own events, beside the run's.
    evaluated = run_single(load_config(str(out), flag="eval_only").base, eval_only=True)
    eval_events = _events(os.path.join(evaluated["output_dir"], "tensorboard", "digit1",
                                       "vae_b1_seed0"))  # fmt: skip
    assert _steps(eval_events, "final/auroc")[0][1] == pytest.approx(
        evaluated["models"]["vae"]["auroc"])
    assert [s for s, _ in _steps(events, "final/auroc")] == [4]  # The original is untouched.


def test_sweep_has_one_hparams_row_per_model_and_switch_off(tmp_path):
    grid = SweepConfig(betas=(1.0, 4.0), seeds=(0, 1), classes=(1,), base=ExperimentConfig(
        epochs=1, checkpoint_every=0, output_dir=str(tmp_path / "s"), **TINY))  # fmt: skip
    result = run_grid(grid, kind="sweep")
    runs = sorted(os.listdir(tmp_path / "s" / "tensorboard" / "digit1"))
    assert runs == ["ae_seed0", "ae_seed1", "vae_b1_seed0", "vae_b1_seed1", "vae_b4_seed0",
                    "vae_b4_seed1"]  # fmt: skip
    for row in result["rows"]:
        beta = "" if row["beta"] is None else f"_b{row['beta']:g}"
        folder = f"{row['model']}{beta}_seed{row['seed']}"
        events = _events(tmp_path / "s" / "tensorboard" / "digit1" / folder)
        assert _steps(events, "final/auroc")[0][1] == pytest.approx(row["auroc"])
    off = run_single(ExperimentConfig(epochs=1, models=("ae",), tensorboard=False,
                                      output_dir=str(tmp_path / "off"), **TINY))  # fmt: skip
    assert "tensorboard" not in os.listdir(off["output_dir"])


def test_missing_writer_warns_and_runs_without_events(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # Import fails.
    result = run_single(ExperimentConfig(epochs=1, models=("ae",), checkpoint_every=0,
                                         output_dir=str(tmp_path / "r"), **TINY))  # fmt: skip
    assert "tensorboardX is not installed" in caplog.text
    assert "tensorboard" not in os.listdir(result["output_dir"])


@pytest.mark.slow
def test_real_tensorboard_server_serves_the_run(run):
    with socket.socket() as s:  # A free loopback port.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={run / 'tensorboard'}",
         "--host=127.0.0.1", f"--port={port}", "--load_fast=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def get(path, body=None):
        request = urllib.request.Request(base + path, data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.time() + 120
        while True:
            try:
                runs = get("/data/runs")
                if "digit1/vae_b2_seed0" in runs:
                    break
            except OSError:
                pass
            assert time.time() < deadline and server.poll() is None, "tensorboard did not start"
            time.sleep(0.5)
        tags = get("/data/plugin/scalars/tags")
        assert "final/auroc" in tags["digit1/vae_b2_seed0"]
        auroc = json.loads((run / "metrics.json").read_text())["models"]["vae"]["auroc"]
        served = get("/data/plugin/scalars/scalars?run=digit1/vae_b2_seed0&tag=final/auroc")
        assert served[-1][2] == pytest.approx(auroc, rel=1e-6)  # [wall time, step, value]
        experiment = get("/data/plugin/hparams/experiment", b'{"experimentName": ""}')
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model", "beta", "seed", "class", "smoothing"} <= names
        assert "final/auroc" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unwritable_event_folder_is_one_error_before_training(tmp_path):
    from experiments.config import ConfigError  # noqa: PLC0415
    from experiments.tensorboard import Board  # noqa: PLC0415

    blocked = tmp_path / "tensorboard"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match="cannot write TensorBoard events .* --notensorboard"):
        Board(str(blocked))
