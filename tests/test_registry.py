"""A model defined outside the packages: registered, trained and scored through the library
and the sweep's pipeline, with no edit to jax_vae/ or experiments/."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SIZES, run_grid

from experiments.config import ExperimentConfig, SweepConfig, validate_sweep
from jax_vae import keys, losses, models, registry, scoring, train


# ---- The README's example of adding a model (it registers the same spec inline). ----
def denoising_loss(module, *, likelihood="gaussian"):
    def loss(params, x, key, hparams):  # One image; noise std hparams["noise"].
        noisy = x + hparams["noise"] * jax.random.normal(key, x.shape)
        reconstruction = losses.squared_error(x, module.apply(params, noisy))
        return {"total": reconstruction, "reconstruction": reconstruction}

    return loss


DAE = registry.ModelSpec(
    build=lambda *, architecture, **sizes: models.AutoEncoder(**sizes),  # widths, image shape
    loss=denoising_loss,
    score=lambda module, *, smoothing=0.0, **_: scoring.reconstruction_score(
        module.apply, smoothing=smoothing, image_shape=module.image_shape),
    reconstruct=lambda module: module.apply,
    hparams={"noise": 0.2},
)
# ---- end of the example. ----



def _data(key):
    return tuple(np.asarray(jax.random.key_data(key)).ravel())


@pytest.fixture
def dae():
    before = {n: _data(keys.model_keys(0, n).train) for n in ("ae", "vae")}
    registry.register("dae", DAE)
    yield registry.build("dae", **SIZES)
    registry.unregister("dae")
    # Registering a model changed no other model's keys.
    assert {n: _data(keys.model_keys(0, n).train) for n in ("ae", "vae")} == before


def test_a_registered_model_trains_vmapped_over_its_own_hyperparameter(dae, split0):
    assert "dae" in registry.names() and keys.model_id("dae") not in (0, 1)
    images = split0.train_images[:512]
    trainer = train.make_train(dae, epochs=2, batch_size=64)
    key = keys.model_keys(0, "dae").train
    state, history = jax.jit(jax.vmap(trainer, in_axes=(None, None, 0)))(
        key, images, {"noise": jnp.array([0.0, 0.5])}
    )
    # Without noise it is the plain autoencoder: trained from the same key, the same model.
    ae = train.make_train(registry.build("ae", **SIZES), epochs=2, batch_size=64)
    ae_state, ae_history = jax.jit(ae)(key, images)
    np.testing.assert_allclose(history["total"][0], ae_history["total"], rtol=1e-5)
    assert history["total"][1, -1] > history["total"][0, -1]  # Noise makes it harder.
    # Its score: the mean squared error of the clean image's reconstruction.
    params = jax.tree.map(lambda a: a[0], state.params)
    got = scoring.map_chunked(dae.score(), params, split0.val_images[:50], chunk_size=16)
    recon = np.asarray(dae.module.apply(params, split0.val_images[:50]))
    np.testing.assert_allclose(got, ((split0.val_images[:50] - recon) ** 2).mean(1), rtol=1e-5)


def test_a_registered_model_runs_through_the_sweep_pipeline(dae, tmp_path):
    grid = SweepConfig(
        seeds=(0,), classes=(1,),
        base=ExperimentConfig(models=("ae", "dae"), epochs=1, anomaly_fraction=0.1,
                              checkpoint_every=0, output_dir=str(tmp_path / "s"), **SIZES),
    )  # fmt: skip
    validate_sweep(grid)  # --models=ae,dae is a valid flag once dae is registered.
    result = run_grid(grid, kind="sweep")
    (row,) = [r for r in result["rows"] if r["model"] == "dae"]
    assert row["beta"] is None and row["auroc"] > 0.8
    assert set(row["history"]) == {"total", "reconstruction"}
    assert {"AE", "DAE"} <= set(result["summary"])
    assert "DAE" in (tmp_path / "s" / "summary.txt").read_text()
