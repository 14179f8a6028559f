"""Checkpoints: kill and resume, eval-only, corrupt folders, determinism."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SIZES, SMALL_RUN, cli, cli_argv, command_flags, run_single

from experiments.config import ConfigError, ExperimentConfig, load_run_config
from jax_vae import checkpoints, registry, train

METRICS = ("auroc", "auprc", "f1", "precision", "recall", "fpr", "threshold")


def _main(*args, timeout=300):
    return cli("main", *args, timeout=timeout)


def _metrics(run_dir):
    record = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    return {
        name: ({k: m[k] for k in METRICS}, m["history"]) for name, m in record["models"].items()
    }


def test_resume_in_memory_is_bit_identical(tmp_path):
    x = jax.random.uniform(jax.random.key(1), (300, 784))
    model = registry.build("vae", **SIZES)
    full = train.train(jax.random.key(0), x, model=model, epochs=5, batch_size=64)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "c"), every=2, keep=2)
    train.train(jax.random.key(0), x, model=model, epochs=3, batch_size=64, checkpointer=ckpt)
    assert sorted(os.listdir(tmp_path / "c")) == ["2", "3"]  # Every 2 epochs and the last.
    resumed = train.train(
        jax.random.key(0), x, model=model, epochs=5, batch_size=64,
        checkpointer=checkpoints.Checkpointer(str(tmp_path / "c"), every=2, keep=2),
    )  # fmt: skip
    assert resumed.epochs_run == 2
    chex.assert_trees_all_equal(full.params, resumed.params)
    np.testing.assert_array_equal(full.history["total"], resumed.history["total"])
    assert sorted(os.listdir(tmp_path / "c")) == ["4", "5"]  # Older ones pruned.


@pytest.mark.parametrize("asynchronous", [True, False])
def test_a_failed_save_is_one_checkpoint_error(tmp_path, monkeypatch, asynchronous):
    ckpt = checkpoints.Checkpointer(str(tmp_path / "c"), asynchronous=asynchronous)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", full_disk)
    trainer = train.make_train(registry.build("ae", hidden_dims=(8,), latent_dim=2))
    state = trainer.init(jax.random.key(0), jnp.zeros((200, 784)), {})
    with pytest.raises(checkpoints.CheckpointError, match="cannot write checkpoint 1 in .*space"):
        ckpt.save(1, state, [{"total": 1.0}])
        ckpt.wait()  # In the background: the error comes when the write is waited for.


def test_changed_model_shape_is_refused(tmp_path):
    x = jax.random.uniform(jax.random.key(1), (100, 784))
    ckpt = str(tmp_path / "c")
    train.train(
        jax.random.key(0), x, model=registry.build("ae", **SIZES),
        epochs=1, batch_size=50, checkpointer=checkpoints.Checkpointer(ckpt),
    )  # fmt: skip
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"does not fit this model: .*dense_0/kernel: checkpoint \(4, 32\), model \(4, 16\)",
    ):
        train.train(
            jax.random.key(0), x, model=registry.build("ae", hidden_dims=(16,), latent_dim=4),
            epochs=2, batch_size=50, checkpointer=checkpoints.Checkpointer(ckpt),
        )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(small_run):
    """SMALL_RUN in-process (the command's numbers: the same flags, devices and XLA)."""
    return small_run


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    """Killed (its flags from a flagfile) once a checkpoint is on disk, then resumed: the
    uninterrupted run's numbers, and the command's outputs and logs."""
    out = tmp_path / "killed"
    flagfile = tmp_path / "small.flags"
    flagfile.write_text("\n".join([*command_flags(SMALL_RUN), f"--output_dir={out}"]) + "\n")
    proc = subprocess.Popen(cli_argv("main", f"--flagfile={flagfile}"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = out / "checkpoints" / "digit1_ae" / "2"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "metrics.json").exists()
    resumed = _main(f"--resume={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from the checkpoint of epoch" in resumed.stderr
    assert _metrics(out) == _metrics(uninterrupted)
    assert "AUROC" in resumed.stdout.upper() and "VAE" in resumed.stdout
    assert "vae epoch 3/3" in resumed.stderr  # Per-epoch progress is logged...
    assert "orbax" not in resumed.stderr  # ...but not Orbax's checkpoint bookkeeping.
    assert "3" in os.listdir(out / "checkpoints" / "digit1_vae")  # Which did happen.
    # A command's timings start with the process: start-up and imports are phases too.
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    assert {"startup", "backend", "imports", "train"} <= set(timings)


def test_eval_only_reproduces_and_writes_beside(uninterrupted):
    before = sorted(os.listdir(uninterrupted))
    stored = json.loads((uninterrupted / "metrics.json").read_text())
    config = load_run_config(str(uninterrupted), flag="eval_only")
    result = run_single(config, eval_only=True)
    for name in ("ae", "vae"):
        for key in METRICS:
            assert result["models"][name][key] == stored["models"][name][key], (name, key)
    eval_dir = result["output_dir"]
    assert os.path.dirname(eval_dir) == str(uninterrupted) and "eval_p95" in eval_dir
    assert set(os.listdir(uninterrupted)) == set(before) | {os.path.basename(eval_dir)}
    assert json.loads((uninterrupted / "metrics.json").read_text()) == stored  # Untouched.
    # Re-scored with a smoothed residual: a labelled folder, the same models, other scores.
    smoothed = run_single(dataclasses.replace(config, score_smoothing=1.5, score="shift"),
                          eval_only=True)  # fmt: skip
    assert os.path.basename(smoothed["output_dir"]).endswith("eval_p95_af0.1_s1.5_shift")
    assert smoothed["models"]["ae"]["auroc"] != stored["models"]["ae"]["auroc"]
    assert smoothed["models"]["ae"]["history"] == stored["models"]["ae"]["history"]
    # Another threshold: a new folder, a higher threshold, the same AUROC.
    other = run_single(dataclasses.replace(config, threshold_percentile=99.0), eval_only=True)
    assert "_eval_p99" in os.path.basename(other["output_dir"])
    for name in ("ae", "vae"):
        assert other["models"][name]["auroc"] == stored["models"][name]["auroc"]
        assert other["models"][name]["threshold"] > stored["models"][name]["threshold"]


def test_corrupt_and_foreign_checkpoints_are_one_line_errors(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "metrics.json").unlink()  # Pretend it was interrupted after training.
    for root, _, files in os.walk(run / "checkpoints" / "digit1_ae" / "3"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    proc = _main(f"--resume={run}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error:") and "checkpoint" in lines[-1]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    proc = _main(f"--resume={foreign}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: --resume {foreign} is not a run folder (no config.json)"
    ]
    # A run without its final checkpoint cannot be re-scored: one line, and no traceback from
    # a checkpoint thread still running when the process exits.
    shutil.rmtree(run / "checkpoints" / "digit1_ae")
    proc = _main(f"--eval_only={run}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no final checkpoint" in proc.stderr.strip().splitlines()[-1]
    changed = _main(f"--resume={run}", "--latent_dim=10")
    assert changed.returncode == 1
    assert "--latent_dim=10 differs from the run's latent_dim=4" in changed.stderr


def test_run_config_from_before_a_field_existed_gets_its_default(tmp_path):
    # Runs written before --score_smoothing and --preset existed can still be resumed
    # and re-scored: the missing settings take their defaults (the old behaviour).
    # Before --split_seed, a run's --seed also seeded its split: it loads so.
    record = dataclasses.asdict(ExperimentConfig(beta=2.0, epochs=3, seed=4))
    for added_later in ("score_smoothing", "preset", "split_seed"):
        del record[added_later]
    (tmp_path / "config.json").write_text(json.dumps(record))
    config = load_run_config(str(tmp_path), flag="eval_only")
    assert config == ExperimentConfig(beta=2.0, epochs=3, seed=4, split_seed=4,
                                      output_dir=str(tmp_path))  # fmt: skip


def test_resume_or_eval_on_other_images_is_refused(uninterrupted, tmp_path, monkeypatch):
    # Another source may order the same images differently (tfds vs the IDX files): the
    # held-out normals would then include training images. The split's fingerprint says so.
    import shutil  # noqa: PLC0415

    from jax_vae import data  # noqa: PLC0415

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    real = data.load_dataset("bundled")
    order = np.random.default_rng(0).permutation(len(real.train_labels))
    shuffled = real._replace(train_images=real.train_images[order],
                             train_labels=real.train_labels[order])  # fmt: skip
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: shuffled)
    config = load_run_config(str(run), flag="eval_only")
    with pytest.raises(ConfigError, match="class 1: the training and held-out images differ"):
        run_single(config, eval_only=True)
    (run / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="split fingerprint"):
        run_single(config, resume=True)
    assert not (run / "metrics.json").exists()
    assert sorted(os.listdir(run)) == sorted(set(os.listdir(uninterrupted)) - {"metrics.json"})


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_resumable(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli_argv("main", "--models=ae", "--epochs=60", "--checkpoint_every=2",
                 "--normal_class=1", "--hidden_dims=32", "--latent_dim=4", "--anomaly_fraction=0.1",
                 f"--output_dir={out}"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = out / "checkpoints" / "digit1_ae" / "2"
    deadline = time.time() + 240
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]  # After the progress lines: one line that says it all.
    assert re.fullmatch(
        rf"error: interrupted in epoch \d+/60 of ae; continue from epoch \d+ with "
        rf"--resume={re.escape(str(out))}", line), line
    assert (out / "checkpoints" / "digit1_ae" / "2").exists()  # Checkpoints intact.
    saved = int(re.search(r"from epoch (\d+)", line).group(1))
    checkpointer = checkpoints.Checkpointer(str(out / "checkpoints" / "digit1_ae"))
    assert checkpointer.latest_epoch() == saved


def test_latest_epoch_can_reread_the_folder(tmp_path):
    # Ctrl-C inside a save: the manager's own list may lag what is complete on disk.
    x = jax.random.uniform(jax.random.key(1), (100, 784))
    model = registry.build("ae", hidden_dims=(8,), latent_dim=2)
    stale = checkpoints.Checkpointer(str(tmp_path / "c"))
    assert stale.latest_epoch() is None
    train.train(jax.random.key(0), x, model=model, epochs=1, batch_size=50, hooks=(),
                checkpointer=checkpoints.Checkpointer(str(tmp_path / "c")))  # fmt: skip
    assert stale.latest_epoch(reload=True) == 1
