"""Data- and model-parallel training on 4 CPU host devices (each check in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}

PRELUDE = """
import jax, jax.numpy as jnp, numpy as np, chex
from jax_vae import models, train, sharding
assert jax.device_count() == 4, jax.devices()
x = jax.random.uniform(jax.random.key(1), (300, 784))
m = models.make_model("vae", hidden_dims=(32,), latent_dim=4)
"""


def _run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_data_parallel_equals_single_device():
    _run("""
        single = train.train(jax.random.key(0), x, model=m, epochs=2, batch_size=64)
        dp = train.train(jax.random.key(0), x, model=m, epochs=2, batch_size=64,
                         mesh=sharding.make_mesh("data"))
        leaf = jax.tree.leaves(dp.params)[0]
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
        chex.assert_trees_all_close(single.params, sharding.local_copy(dp.params),
                                    rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(single.history.total, dp.history.total, rtol=1e-5)
    """)


def test_sweep_of_8_models_over_4_devices():
    _run("""
        keys = jax.random.split(jax.random.key(0), 8)
        betas = jnp.arange(1.0, 9.0)
        plain = train.train(keys, x, model=m, beta=betas, epochs=2, batch_size=64, group_size=0)
        spread = train.train(keys, x, model=m, beta=betas, epochs=2, batch_size=64,
                             mesh=sharding.make_mesh("models"))
        for leaf in jax.tree.leaves(spread.params):
            assert [s.data.shape[0] for s in leaf.addressable_shards] == [2, 2, 2, 2]
            assert len({s.device for s in leaf.addressable_shards}) == 4
        chex.assert_trees_all_close(plain.params, sharding.local_copy(spread.params),
                                    rtol=1e-4, atol=1e-5)
    """)


def test_batch_size_must_divide_by_width():
    _run("""
        try:
            train.train(jax.random.key(0), x, model=m, epochs=1, batch_size=50,
                        mesh=sharding.make_mesh("data"))
        except ValueError as e:
            assert "divide by the data-parallel width (4 devices)" in str(e), e
        else:
            raise AssertionError("no error")
        # A sweep spreading whole models over the devices does not split batches.
        from experiments.config import (
            ConfigError, ExperimentConfig, SweepConfig, validate_sweep)
        validate_sweep(SweepConfig(base=ExperimentConfig(batch_size=126)))
        try:
            validate_sweep(
                SweepConfig(mesh_layout="data", base=ExperimentConfig(batch_size=126)))
        except ConfigError as e:
            assert "data-parallel width" in str(e), e
        else:
            raise AssertionError("no error")
    """)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--batch_size=126", "--epochs=1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --batch_size 126 must divide by the data-parallel width")


def test_sweep_runs_on_4_devices(tmp_path, layout="models"):
    _run(f"""
        import os
        from experiments import sweeps
        from experiments.config import ExperimentConfig, SweepConfig
        results = {{}}
        for n in (1, 4):
            config = SweepConfig(
                betas=(1.0, 2.0), seeds=(0,), digits=(1,), mesh_layout="{layout}",
                base=ExperimentConfig(epochs=1, num_devices=n, checkpoint_every=0,
                                      output_dir=r"{tmp_path}/s%d" % n))
            results[n] = sweeps.run_sweep(config, out=open(os.devnull, "w"))["rows"]
        assert len(results[4]) == 3  # 1 AE (padded to 4 on the mesh) + 2 VAEs.
        for a, b in zip(results[1], results[4], strict=True):
            assert abs(a["auroc"] - b["auroc"]) < 1e-3, (a, b)
    """)


def test_runner_on_1_and_4_devices_agree(tmp_path):
    _run(f"""
        import json, os
        from experiments import runner
        from experiments.config import ExperimentConfig
        metrics = {{}}
        for n in (1, 4):
            out = r"{tmp_path}/run%d" % n
            config = ExperimentConfig(epochs=1, normal_digit=7, num_devices=n, checkpoint_every=0,
                                      output_dir=out)
            metrics[n] = runner.run_experiment(config, out=open(os.devnull, "w"))["models"]
        assert sorted(os.listdir(r"{tmp_path}/run1")) == sorted(os.listdir(r"{tmp_path}/run4"))
        for name in ("ae", "vae"):
            assert abs(metrics[1][name]["auroc"] - metrics[4][name]["auroc"]) < 1e-3
            assert abs(metrics[1][name]["f1"] - metrics[4][name]["f1"]) < 1e-2
    """)


def test_two_processes_train_together_and_process_0_writes(tmp_path):
    import json
    import socket

    with socket.socket() as s:  # A free loopback port for the coordinator.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    common = ["--epochs=1", "--models=ae", "--normal_digit=1", "--checkpoint_every=0"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.main",
                *common,
                f"--output_dir={tmp_path / 'mh'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "process 1 of 2" in outputs[1][1]
    multi = json.loads((tmp_path / "mh" / "metrics.json").read_text())
    assert len(multi["config"]["devices"]) == 2  # One CPU device per process.
    single = subprocess.run(
        [sys.executable, "-m", "experiments.main", *common, f"--output_dir={tmp_path / 'one'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert abs(multi["models"]["ae"]["auroc"] - one["models"]["ae"]["auroc"]) < 1e-3
