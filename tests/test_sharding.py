"""Data- and model-parallel training on 4 CPU host devices (one subprocess), and two hosts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, SIZES, cli_argv, run_single

from experiments import pipeline
from experiments.config import ExperimentConfig, SweepConfig

# The tests' own XLA flags (conftest), without any device count, then the one wanted.
_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
ENV = {**os.environ, "XLA_FLAGS": " ".join([*_FLAGS, "--xla_force_host_platform_device_count=4"])}

FOUR_DEVICES = """
import json, os, jax, jax.numpy as jnp, numpy as np, chex
from experiments import pipeline
from experiments.config import ConfigError, ExperimentConfig, SweepConfig
from jax_vae import models, registry, sharding, train
assert jax.device_count() == 4, jax.devices()
x = jax.random.uniform(jax.random.key(1), (300, 784))
m = registry.build("vae", hidden_dims=(32,), latent_dim=4)

# Data parallel: the batch is split over the devices; the result is the single device's.
single = train.train(jax.random.key(0), x, model=m, epochs=2, batch_size=64)
dp = train.train(jax.random.key(0), x, model=m, epochs=2, batch_size=64,
                 mesh=sharding.make_mesh("data"))
leaf = jax.tree.leaves(dp.params)[0]
assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
chex.assert_trees_all_close(single.params, sharding.local_copy(dp.params), rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(single.history["total"], dp.history["total"], rtol=1e-5)

# Models layout: 8 models, 2 on each device, equal to all 8 vmapped on one.
keys, betas = jax.random.split(jax.random.key(0), 8), jnp.arange(1.0, 9.0)
plain = train.train(keys, x, {"beta": betas}, model=m, epochs=2, batch_size=64, group_size=0)
spread = train.train(keys, x, {"beta": betas}, model=m, epochs=2, batch_size=64,
                     mesh=sharding.make_mesh("models"))
for leaf in jax.tree.leaves(spread.params):
    assert [s.data.shape[0] for s in leaf.addressable_shards] == [2, 2, 2, 2]
    assert len({s.device for s in leaf.addressable_shards}) == 4
chex.assert_trees_all_close(plain.params, sharding.local_copy(spread.params), rtol=1e-4, atol=1e-5)

# A batch that does not split over 4 devices is refused, by the library and the pipeline
# (but not for a sweep that spreads whole models).
try:
    train.train(jax.random.key(0), x, model=m, epochs=1, batch_size=50,
                mesh=sharding.make_mesh("data"))
    raise AssertionError("no error")
except ValueError as e:
    assert "divide by the data-parallel width (4 devices)" in str(e), e
tiny = dict(hidden_dims=(32,), latent_dim=4, epochs=1, checkpoint_every=0, anomaly_fraction=0.1,
            tensorboard=False)
base = ExperimentConfig(batch_size=126, **tiny)
assert pipeline.config_mesh(base, "models") is not None
try:
    pipeline.config_mesh(base, "data")
    raise AssertionError("no error")
except ConfigError as e:
    assert "--batch_size 126 must divide by the data-parallel width" in str(e), e

# The pipeline: a sweep on 4 devices (models padded to whole devices, the padding dropped;
# the test compares its rows with one device's). A run's data-parallel training through the
# pipeline: test_two_processes_train_together_and_process_0_writes.
out = os.environ["OUT"]
grid = SweepConfig(betas=(1.0, 2.0, 3.0), seeds=(0,), classes=(1,),
                   base=ExperimentConfig(**tiny, models=("vae",), output_dir=f"{out}/sweep4"))
with open(f"{out}/rows4.json", "w") as f:
    json.dump(pipeline.run(grid, kind="sweep").rows, f, default=float)  # No plots.
print("ok")
"""


@pytest.mark.slow
def test_four_devices_train_data_and_model_parallel(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FOUR_DEVICES)],
        cwd=ROOT, env={**ENV, "OUT": str(tmp_path)}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    # The same sweep on this process's one device: the same rows.
    one = pipeline.run(SweepConfig(
        betas=(1.0, 2.0, 3.0), seeds=(0,), classes=(1,),
        base=ExperimentConfig(**SIZES, epochs=1, checkpoint_every=0,
                              models=("vae",),
                              anomaly_fraction=0.1, tensorboard=False,
                              output_dir=str(tmp_path / "sweep1"))), kind="sweep").rows
    four = json.loads((tmp_path / "rows4.json").read_text())
    assert len(one) == len(four) == 3  # 3 VAEs (padded to 4 models on 4 devices).
    for r1, r4 in zip(one, four, strict=True):
        assert abs(r1["auroc"] - r4["auroc"]) < 1e-3 and abs(r1["f1"] - r4["f1"]) < 1e-2


@pytest.mark.slow
def test_two_processes_train_together_and_process_0_writes(tmp_path):
    with socket.socket() as s:  # A free loopback port for the coordinator.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": " ".join(_FLAGS)}  # One CPU device per process.
    common = ["--epochs=1", "--models=ae", "--normal_class=1", "--checkpoint_every=0",
              "--hidden_dims=32", "--latent_dim=4", "--anomaly_fraction=0.1"]  # fmt: skip
    procs = [
        subprocess.Popen(
            cli_argv("main", *common, f"--output_dir={tmp_path / 'mh'}",
                     f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "process 1 of 2" in outputs[1][1]
    multi = json.loads((tmp_path / "mh" / "metrics.json").read_text())
    assert len(multi["config"]["devices"]) == 2  # One CPU device per process.
    one = run_single(ExperimentConfig(epochs=1, models=("ae",), normal_class=1, checkpoint_every=0,
                                      **SIZES, anomaly_fraction=0.1,
                                      output_dir=str(tmp_path / "one")))  # One device, here.
    assert abs(multi["models"]["ae"]["auroc"] - one["models"]["ae"]["auroc"]) < 1e-3
