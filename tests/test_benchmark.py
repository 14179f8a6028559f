"""The benchmarks: the profile split (which compiled instructions count as matmuls), the
time-to-result and accelerator suites in their reduced, CPU-sized form."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accelerator, throughput, time_to_result
from jax_vae.registry import build as make_model

HLO = """\
HloModule jit_f, entry_computation_layout={(f32[8,4]{1,0}, f32[4,2]{1,0})->f32[8,2]{1,0}}

%fused_computation (param_0: f32[8,4], param_1: f32[4,2]) -> f32[8,2] {
  %param_0 = f32[8,4]{1,0} parameter(0)
  %param_1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.0 = f32[8,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}
}

%fused_computation.1 (param_0.1: f32[8,2]) -> f32[8,2] {
  %param_0.1 = f32[8,2]{1,0} parameter(0)
  ROOT %tanh.0 = f32[8,2]{1,0} tanh(%param_0.1)
}

ENTRY %main.5 (a: f32[8,4], b: f32[4,2]) -> f32[8,2] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %ynn_fusion = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation
  %dot.7 = f32[2,2]{1,0} dot(%b, %b), lhs_contracting_dims={0}, rhs_contracting_dims={1}
  ROOT %tanh_fusion = f32[8,2]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_computation.1
}
"""


def test_matmul_instructions_finds_dots_and_fusions_that_contain_one():
    found = throughput.matmul_instructions(HLO)
    assert {"ynn_fusion", "dot.7"} <= found
    assert "tanh_fusion" not in found and "a" not in found


def test_compiled_matmul_is_found():
    f = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(jnp.ones((8, 4)), jnp.ones((4, 2))).compile()
    hlo = f.as_text()
    found = throughput.matmul_instructions(hlo)
    entry = hlo[hlo.index("ENTRY") :]
    assert any(f"%{name} = " in entry for name in found)


def test_profile_epoch_splits_the_epoch():
    images = jnp.asarray(np.random.default_rng(0).random((512, 784), np.float32))
    seconds, matmul_seconds = throughput.profile_epoch(make_model("ae"), images, batch_size=128)
    assert 0 < matmul_seconds < seconds


def test_bad_flags_fail_before_the_peak_probe():
    from absl import flags  # noqa: PLC0415
    from helpers import cli, one_line_error  # noqa: PLC0415

    from experiments.config import ConfigError  # noqa: PLC0415

    for args, needle in ((["--epochs=0"], "--epochs must be >= 1"),
                         (["--sweep_sizes=a"], "--sweep_sizes must be integers")):  # fmt: skip
        flags.FLAGS(["throughput", *args])
        with pytest.raises(ConfigError, match=needle):
            throughput.body()
    # As the command: one line, exit 1.
    line = one_line_error(cli("benchmarks.throughput", "--models=vea", timeout=30))
    assert "--models must be one of ae, vae, got 'vea'" in line


def test_a_disturbed_peak_probe_is_flagged(monkeypatch, caplog, capsys):
    from absl import flags  # noqa: PLC0415

    flags.FLAGS(["throughput", "--epochs=1", "--sweep_sizes=", "--hidden_dims=32", "--models=ae"])
    monkeypatch.setattr(throughput, "matmul_peak_gflops", lambda size: 0.001)  # "Disturbed".
    throughput.body()(None)  # As the command runs it, after its checks.
    assert "AE" in capsys.readouterr().out
    assert "not trustworthy" in caplog.text


def test_time_to_result_cold_then_warm(tmp_path, capsys):
    # Two fresh processes sharing an empty compilation cache: the second loads what the
    # first compiled, and nothing else changes.
    record = time_to_result.time_to_result(reduced=True)
    cold, warm = record["runs"]["cold"], record["runs"]["warm"]
    assert record["identical"] and cold["metrics"] == warm["metrics"]
    assert warm["phases"]["compile"] < cold["phases"]["compile"]
    for run in (cold, warm):
        phases = run["phases"]
        assert {"startup", "backend", "imports", "data", "compile", "train", "scoring", "plots",
                "exit"} <= set(phases)  # fmt: skip
        assert phases["total"] + phases["exit"] == pytest.approx(run["wall_seconds"])
        assert run["ratio"] == pytest.approx(run["wall_seconds"] / run["train_seconds"])
        assert 0 < run["peak_rss_mb"] < 4096
    table = capsys.readouterr().out
    assert "wall/training" in table and "identical" in table


def test_accelerator_suite_reduced(tmp_path, capsys, monkeypatch):
    from absl import flags  # noqa: PLC0415

    output = tmp_path / "out" / "accelerator.json"
    flags.FLAGS(["accelerator", "--reduced", f"--output={output}"])
    monkeypatch.chdir(tmp_path)
    accelerator.body()(None)
    record = json.loads(output.read_text())
    assert record["backend"] == jax.default_backend() and record["reduced"]
    assert set(record["models"]) == {"ae", "vae"}
    assert all(m["images_per_second"] > 0 for m in record["models"].values())
    assert [v["k"] for v in record["vmapped_vaes"]] == [1, 2]
    assert record["vmapped_vaes"][0]["per_one"] == 1.0
    assert all(s["images_per_second"] > 0 for s in record["scoring"].values())
    grid = record["grid"]
    assert grid["models"] == 4 and grid["seconds"] >= grid["train_seconds"] > 0
    assert 0.5 < grid["mean_auroc"]["ae"] <= 1
    assert record["memory"]["host_peak_rss_mb"] > 0
    # Two classes, one training epoch program per model kind (compiled, or loaded from the
    # tests' shared cache), reused for the second class.
    assert grid["training_epochs_compiled"] + grid["training_epochs_cached"] == 2
    assert set(record["host_peak_mb_by_k"]) == {"1", "2"}
    assert all(mb > 0 for mb in record["host_peak_mb_by_k"].values())
    out = capsys.readouterr().out
    assert "K VAEs" in out and "benchmark grid" in out and str(output) in out


def test_image_loading_suite_reduced(tmp_path, capsys):
    from absl import flags  # noqa: PLC0415

    from benchmarks import images  # noqa: PLC0415

    output = tmp_path / "images.json"
    flags.FLAGS(["images", "--reduced", f"--output={output}"])
    images.body()(None)
    record = json.loads(output.read_text())
    assert record["images"] == 2000 and record["images_per_second"] > 0
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_large_images_suite_reduced(tmp_path, capsys):
    from absl import flags  # noqa: PLC0415

    from benchmarks import large_images  # noqa: PLC0415

    output = tmp_path / "large.json"
    flags.FLAGS(["large_images", "--reduced", f"--output={output}"])
    large_images.common.suite_body("large_images", large_images.measure)()(None)
    record = json.loads(output.read_text())
    run = record["jax"]
    assert record["photos"] == 24 and run["train_images"] == 22
    assert run["peak_rss_mb"] > 100 and run["seconds_per_epoch"] > 0 and run["microbatches"]
    assert "peak RSS MB" in capsys.readouterr().out
