"""Research extensions: Bernoulli likelihood, KL warm-up, IWAE score, seed ensembles."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SIZES, run_single

from experiments.config import ExperimentConfig
from jax_vae import keys, models, registry, scoring, train


def _np_bce(x, logits):
    p = 1 / (1 + np.exp(-logits))
    return -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_bernoulli_loss_matches_numpy(name):
    model = registry.build(name, **SIZES)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (784,)))
    params = model.init(jax.random.key(1), jnp.asarray(x))
    key = jax.random.key(2)
    terms = registry.build(name, likelihood="bernoulli", **SIZES).loss(params, x, key,
                                                                      {"beta": 2.0})
    if name == "ae":
        logits = model.module.apply(params, x, method=lambda m, x: m.decode_logits(m.encode(x)))
        kl = 0.0
    else:
        mean, logvar = model.module.apply(params, x, method="encode")
        z = models.reparameterize(key, mean, logvar)
        logits = model.module.apply(params, z, method="decode_logits")
        kl = 0.5 * np.sum(np.exp(logvar) + np.asarray(mean) ** 2 - 1 - np.asarray(logvar))
    expected = _np_bce(x, np.asarray(logits, np.float64))
    np.testing.assert_allclose(terms["reconstruction"], expected, rtol=1e-4)
    np.testing.assert_allclose(terms["total"], expected + 2.0 * kl, rtol=1e-4)
    with pytest.raises(ValueError, match="likelihood"):
        registry.build(name, likelihood="poisson")


def test_kl_warmup_ramps_beta():
    vae = registry.build("vae", **SIZES)
    x = jax.random.uniform(jax.random.key(1), (784,))
    params, key = vae.init(jax.random.key(0), x), jax.random.key(2)
    out = vae.module.apply(params, x, key)
    kl = 0.5 * np.sum(np.exp(out.logvar) + np.asarray(out.mean) ** 2 - 1 - np.asarray(out.logvar))
    recon = np.sum((np.asarray(x) - np.asarray(out.reconstruction)) ** 2)
    # beta 6 warmed up over 3 epochs: 2, 4, 6, 6; no warm-up: 6 from the start.
    for epoch, beta in zip(range(1, 5), (2.0, 4.0, 6.0, 6.0), strict=True):
        for warmup, expected in ((3, beta), (0, 6.0)):
            hparams = {"beta": 6.0, "kl_warmup_epochs": warmup, "epoch": epoch}
            np.testing.assert_allclose(vae.loss(params, x, key, hparams)["total"],
                                       recon + expected * kl, rtol=1e-5)  # fmt: skip

    # Training hands the loss the 1-based epoch.
    def epoch_loss(params, x, key, hparams):
        return {"total": hparams["epoch"] + 0.0 * jnp.sum(params["params"]["mean_head"]["bias"])}

    result = train.train(jax.random.key(0), jnp.stack([x] * 64),
                         model=dataclasses.replace(vae, loss=epoch_loss), epochs=4,
                         batch_size=32)  # fmt: skip
    np.testing.assert_allclose(result.history["total"], [1.0, 2.0, 3.0, 4.0])


def test_iwae_score_matches_reference():
    model = registry.build("vae", **SIZES)
    x = jax.random.uniform(jax.random.key(1), (784,))
    params = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    for likelihood in ("gaussian", "bernoulli"):
        got = model.score(vae_score="iwae", mc_samples=5, likelihood=likelihood)(
            params, x, key
        )
        encoded = model.module.apply(params, x, method="encode")
        mean, logvar = (np.asarray(a, np.float64) for a in encoded)
        log_w = []
        for k in jax.random.split(key, 5):
            z = np.asarray(
                models.reparameterize(
                    k, jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)
                ),
                np.float64,
            )
            logits = np.asarray(
                model.module.apply(params, jnp.asarray(z, jnp.float32), method="decode_logits"),
                np.float64,
            )
            xn = np.asarray(x, np.float64)
            if likelihood == "gaussian":
                nll = np.sum((xn - 1 / (1 + np.exp(-logits))) ** 2)
            else:
                nll = _np_bce(xn, logits)
            log_prior = -0.5 * np.sum(z**2)
            log_q = -0.5 * np.sum((z - mean) ** 2 / np.exp(logvar) + logvar)
            log_w.append(-nll + log_prior - log_q)
        log_w = np.array(log_w)
        expected = -(np.log(np.mean(np.exp(log_w - log_w.max()))) + log_w.max())
        np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_ensemble_members_and_averaged_scores():
    images = jax.random.uniform(jax.random.key(1), (200, 784))
    model = registry.build("ae", **SIZES)
    members = keys.member_keys(5, "ae", 3).train
    single = keys.model_keys(5, "ae").train
    assert jnp.array_equal(jax.random.key_data(members[0]), jax.random.key_data(single))
    together = train.train(members, images, model=model, epochs=2, batch_size=50)
    alone = [train.train(members[i], images, model=model, epochs=2, batch_size=50)
             for i in range(3)]  # fmt: skip
    # A one-member ensemble is the single model; member i is model i trained alone.
    for i in range(3):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], together.params),
            alone[i].params,
            rtol=1e-4,
            atol=1e-5,
        )
    score_fn = model.score()
    stacked = scoring.score(together.params, images, score_fn=score_fn,
                            key=jnp.stack([jax.random.key(0)] * 3), stacked=True)  # fmt: skip
    singles = [scoring.score(a.params, images, score_fn=score_fn) for a in alone]
    np.testing.assert_allclose(stacked.mean(axis=0), np.mean(singles, axis=0), rtol=1e-4, atol=1e-7)


def test_runner_with_extensions(tmp_path):
    config = ExperimentConfig(
        epochs=2, normal_class=1, ensemble_size=2, likelihood="bernoulli", kl_warmup_epochs=2,
        models=("vae",),
        **SIZES, anomaly_fraction=0.1,
        vae_score="iwae", mc_samples=3, output_dir=str(tmp_path / "r"),
    )  # fmt: skip
    result = run_single(config)
    assert result["models"]["vae"]["auroc"] > 0.9
    assert len(result["models"]["vae"]["history"]["total"]) == 2
    # The ensemble's checkpoints restore for --eval_only.
    again = run_single(config, eval_only=True)
    assert again["models"]["vae"]["auroc"] == pytest.approx(
        result["models"]["vae"]["auroc"], abs=1e-6
    )



def test_fused_scores_are_standardized_sums_of_the_residual_and_the_neighbour_distance(tmp_path):
    """The second family's scores through the pipeline, against NumPy and scikit-learn: the
    residual at smoothing 1 and the 5-NN distance (pixels, and the AE's codes), each
    standardized on the held-out normals, summed."""
    from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

    from experiments import pipeline  # noqa: PLC0415
    from experiments.config import SweepConfig  # noqa: PLC0415

    config = ExperimentConfig(models=("ae",), normal_class=1, anomaly_fraction=0.1, epochs=1,
                              **SIZES, score_smoothing=1.0,
                              checkpoint_every=0, tensorboard=False)  # fmt: skip
    grid = dataclasses.replace(SweepConfig.single(config),
                               scores=("residual", "pixel_knn", "latent_knn"))  # fmt: skip
    result = pipeline.run(dataclasses.replace(
        grid, base=dataclasses.replace(config, output_dir=str(tmp_path / "r"))))  # fmt: skip
    (group,) = result.groups
    split = result.splits[1]
    val, test = group.scores.val[0], group.scores.test[0]  # [images, variants]

    def z(v, t):  # NumPy's standardization by the held-out scores.
        return (t - v.mean()) / v.std()

    encode = group.model.spec.encode(group.model.module)
    codes = {
        "pixel": (split.train_images, split.val_images, split.test_images),
        "latent": tuple(np.asarray(jax.vmap(lambda x: encode(group.params, x))(part))
                        for part in (split.train_images, split.val_images, split.test_images)),
    }  # fmt: skip
    for column, space in ((1, "pixel"), (2, "latent")):
        bank, v_points, t_points = codes[space]
        knn = NearestNeighbors(n_neighbors=5).fit(bank)
        v_knn, t_knn = (np.mean(knn.kneighbors(p)[0] ** 2, axis=1) for p in (v_points, t_points))
        expected = z(val[:, 0], test[:, 0]) + z(v_knn, t_knn)
        np.testing.assert_allclose(test[:, column], expected, rtol=2e-3, atol=2e-3)
    assert [r["score"] for r in result.rows] == ["residual", "pixel_knn", "latent_knn"]


def test_score_rules():
    from experiments.config import ConfigError, SweepConfig, validate_sweep  # noqa: PLC0415

    with pytest.raises(ConfigError, match="--score must be one of residual, shift"):
        validate_sweep(SweepConfig(scores=("shift", "bogus")))
    with pytest.raises(ConfigError, match="--score=shift needs vae_score=mean"):
        validate_sweep(SweepConfig(scores=("shift",), base=ExperimentConfig(vae_score="mc")))
    validate_sweep(SweepConfig(scores=("shift",), base=ExperimentConfig(vae_score="mc",
                                                                        models=("ae",))))
