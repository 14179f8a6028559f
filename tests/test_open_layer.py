"""The experiments layer is as open as the library: a user's file (--import) registers models
whose own hyperparameters are grid axes (--grid, --hparams) of every command, with no edit
to jax_vae/ or experiments/."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import textwrap

import numpy as np
import pytest
from helpers import SIZES, cli, one_line_error, run_grid, run_single

from experiments.config import ConfigError, ExperimentConfig, SweepConfig, validate_sweep
from jax_vae import data, plugins, registry, scores
from jax_vae.detector import Detector

# A user's file: the README's denoising AE (one hyperparameter) and a model that reads two.
MY_MODELS = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    from jax_vae import losses, models, registry, scores, scoring

    LOADS = globals().get("LOADS", 0) + 1  # How often this module was executed.


    def denoising_loss(module, *, likelihood="gaussian"):
        def loss(params, x, key, hparams):  # One image; noise std hparams["noise"].
            noisy = x + hparams["noise"] * jax.random.normal(key, x.shape)
            reconstruction = losses.squared_error(x, module.apply(params, noisy))
            return {"total": reconstruction, "reconstruction": reconstruction}

        return loss


    def masked_loss(module, *, likelihood="gaussian"):
        def loss(params, x, key, hparams):  # Noise, then a share hparams["drop"] of pixels off.
            noise_key, drop_key = jax.random.split(key)
            noisy = x + hparams["noise"] * jax.random.normal(noise_key, x.shape)
            kept = jax.random.uniform(drop_key, x.shape) >= hparams["drop"]
            reconstruction = losses.squared_error(x, module.apply(params, noisy * kept))
            return {"total": reconstruction, "reconstruction": reconstruction}

        return loss


    def spec(loss, hparams):
        return registry.ModelSpec(
            build=lambda *, architecture, **sizes: models.AutoEncoder(**sizes),
            loss=loss,
            score=lambda module, *, smoothing=0.0, **_: scoring.reconstruction_score(
                module.apply, smoothing=smoothing, image_shape=module.image_shape),
            reconstruct=lambda module: module.apply,
            hparams=hparams,
        )


    registry.register("dae", spec(denoising_loss, {"noise": 0.2}))
    registry.register("mdae", spec(masked_loss, {"noise": 0.2, "drop": 0.1}))


    # A score of its own: the largest squared residual of one pixel; and a fusion with it.
    def peak(model, **options):
        reconstruct = model.reconstruct()
        return lambda params, fitted, x, key: jnp.max(jnp.square(x - reconstruct(params, x)))


    scores.register("peak", scores.ScoreSpec(score=peak))
    scores.register("peak_pixel_knn", scores.ScoreSpec(parts=("peak", "pixel_distance")))
''')
SMALL = dict(epochs=1, checkpoint_every=0, anomaly_fraction=0.1, **SIZES)


@pytest.fixture
def my_models(tmp_path):
    """The user's file, imported as --import imports it; its models unregistered after."""
    path = tmp_path / "my_models.py"
    path.write_text(MY_MODELS)
    yield str(path)
    registry.unregister("dae")
    registry.unregister("mdae")
    scores.unregister("peak")
    scores.unregister("peak_pixel_knn")


def _csv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_a_model_that_reads_two_hyperparameters_is_swept_over_both(my_models, tmp_path):
    record = plugins.load(my_models)
    grid = SweepConfig(seeds=(0,), classes=(3,), betas=(1.0,),
                       hparams={"noise": (0.0, 0.3), "drop": (0.0, 0.5)},
                       base=ExperimentConfig(models=("ae", "mdae"), imports=(record,),
                                             output_dir=str(tmp_path / "s"), **SMALL))
    validate_sweep(grid)
    result = run_grid(grid, kind="sweep")
    rows = {(r["model"], r["noise"], r["drop"]): r for r in result["rows"]}
    # The AE reads neither axis: trained once. The masked AE: once per pair of values.
    assert set(rows) == {("ae", None, None)} | {("mdae", n, d) for n in (0.0, 0.3)
                                                for d in (0.0, 0.5)}  # fmt: skip
    assert len({rows[k]["auroc"] for k in rows if k[0] == "mdae"}) == 4
    written = _csv(tmp_path / "s" / "sweep.csv")
    assert [f for f in written[0]][:5] == ["model", "beta", "learning_rate", "noise", "drop"]
    assert {(w["model"], w["noise"], w["drop"]) for w in written} == \
        {("ae", "", "")} | {("mdae", f"{n}", f"{d}") for n in (0.0, 0.3) for d in (0.0, 0.5)}
    assert "MDAE noise=0.3 drop=0.5" in result["summary"]
    assert os.path.isdir(tmp_path / "s" / "tensorboard" / "digit3" / "mdae_noise0.3_drop0.5_seed0")
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())["config"]
    assert saved["hparams"] == {"noise": [0.0, 0.3], "drop": [0.0, 0.5]}
    assert saved["imports"] == [record]
    # A single run at one point of the grid (--hparams) is that row of the sweep.
    single = run_single(ExperimentConfig(
        models=("mdae",), normal_class=3, hparams={"noise": 0.3, "drop": 0.5},
        output_dir=str(tmp_path / "r"), **SMALL))  # fmt: skip
    assert single["models"]["mdae"]["auroc"] == rows[("mdae", 0.3, 0.5)]["auroc"]
    assert single["config"]["hparams"] == {"noise": 0.3, "drop": 0.5}


def test_a_users_score_and_fusion_run_save_and_load(my_models, tmp_path):
    """A score registered in the user's file, fused with a built-in one: the run's test
    scores against NumPy and scikit-learn, and reproduced by the run loaded as a detector."""
    from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

    record = plugins.load(my_models)
    out = tmp_path / "r"
    run_single(ExperimentConfig(models=("ae",), normal_class=1, score="peak_pixel_knn",
                                imports=(record,), output_dir=str(out),
                                **{**SMALL, "checkpoint_every": 1}))  # fmt: skip
    saved = np.load(out / "scores.npz")
    split = data.one_class_split(data.load_dataset("bundled"), normal_class=1,
                                 anomaly_fraction=0.1)  # fmt: skip
    d = Detector.load(str(out))
    np.testing.assert_array_equal(d.score(split.test_images), saved["ae_test"])

    def parts(images):  # The peak residual and the 5-NN distance, independently.
        recon = np.asarray(d.model.module.apply(d.params, images))
        knn = NearestNeighbors(n_neighbors=5).fit(split.train_images)
        return (np.max((images - recon) ** 2, axis=1),
                np.mean(knn.kneighbors(images)[0] ** 2, axis=1))  # fmt: skip

    (val_peak, val_near), (peak, near) = parts(split.val_images), parts(split.test_images)
    expected = ((peak - val_peak.mean()) / val_peak.std()
                + (near - val_near.mean()) / val_near.std())  # fmt: skip
    np.testing.assert_allclose(saved["ae_test"], expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("hparams, models, message", [
    ({"nois": (0.1,)}, ("ae", "dae"), "no selected model reads 'nois'"),
    ({"noise": (0.1,)}, ("ae", "vae"), "no selected model reads 'noise'"),
    ({"noise": (float("nan"),)}, ("dae",), "--grid noise must be a finite number"),
    ({"kl_warmup_epochs": (-1.0,)}, ("vae",), "--grid kl_warmup_epochs must be >= 0"),
])  # fmt: skip
def test_a_bad_axis_is_one_error_that_names_the_models_hyperparameters(my_models, hparams,
                                                                       models, message):
    plugins.load(my_models)
    grid = SweepConfig(hparams=hparams, base=ExperimentConfig(models=models))
    with pytest.raises(ConfigError, match=message) as error:
        validate_sweep(grid)
    assert "learning_rate" in str(error.value)  # What the user may sweep instead.
    if "reads" in message:
        assert ("beta" if "vae" in models else "noise") in str(error.value)


def test_plugins_load_once_and_refuse_a_changed_or_missing_file(my_models, tmp_path):
    first = plugins.load(my_models)
    assert plugins.load(my_models) == first  # Executed once: no second registration.
    module = next(m for n, m in sys.modules.items()
                  if n.startswith("_jax_vae_import_my_models"))
    assert module.LOADS == 1 and "dae" in registry.names()
    plugins.load_recorded([first])
    with open(my_models, "a") as f:
        f.write("# changed\n")
    with pytest.raises(plugins.PluginError, match="has changed since"):
        plugins.load_recorded([first])
    os.remove(my_models)
    with pytest.raises(plugins.PluginError, match="missing"):
        plugins.load_recorded([first])
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    with pytest.raises(plugins.PluginError, match=r"broken.py: import failed: "
                       r"ModuleNotFoundError"):  # fmt: skip
        plugins.load(str(broken))
    assert plugins.load("json")["path"] == os.path.abspath(json.__file__)  # A module by name.


@pytest.mark.slow
def test_the_commands_import_a_users_file(tmp_path):
    """The issue's commands, as a user types them (small sizes): the process boundary (a
    fresh interpreter that knows no dae until --import) is the point."""
    path = tmp_path / "my_models.py"
    path.write_text(MY_MODELS)
    small = ("--epochs=1", "--hidden_dims=32", "--latent_dim=4", "--anomaly_fraction=0.1",
             "--checkpoint_every=1", "--seeds=0")  # fmt: skip
    sweep = cli("sweep", f"--import={path}", "--models=ae,dae", "--grid=noise=0.1,0.4",
                "--digits=3", f"--output_dir={tmp_path / 's'}", *small)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    rows = {(r["model"], r["noise"]): r for r in _csv(tmp_path / "s" / "sweep.csv")}
    assert set(rows) == {("ae", ""), ("dae", "0.1"), ("dae", "0.4")}
    assert rows[("dae", "0.1")]["auroc"] != rows[("dae", "0.4")]["auroc"]
    run = cli("main", f"--import={path}", "--models=dae", "--hparams=noise=0.4",
              "--normal_class=3", f"--output_dir={tmp_path / 'r'}", *small[:-1])
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["models"]["dae"]["auroc"] == float(rows[("dae", "0.4")]["auroc"])
    # Reopening the run imports the file again; a changed file is refused in one line.
    path.write_text(MY_MODELS + "# changed\n")
    error = one_line_error(cli("main", f"--eval_only={tmp_path / 'r'}"))
    assert "my_models.py" in error and "changed" in error
    error = one_line_error(cli("main", "--import=nowhere/missing.py"))
    assert "nowhere/missing.py" in error
