"""Chunked vmapped scores against per-sample loops; metrics against scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SIZES
from sklearn import metrics as skm

from jax_vae import data, metrics, models, registry, scoring, train


def _model_and_params(name):
    model = registry.build(name, **SIZES)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    return model, params


KINDS = [("ae", "mean"), ("vae", "mean"), ("vae", "mc"), ("vae", "elbo"), ("vae", "iwae")]


@pytest.mark.parametrize("name,kind", KINDS)
def test_chunked_scores_equal_per_sample_loop_whatever_the_chunk_size(name, kind):
    model, params = _model_and_params(name)
    images = np.asarray(jax.random.uniform(jax.random.key(1), (50, 784)))
    score_fn = model.score(vae_score=kind, mc_samples=3)
    key = jax.random.key(5)
    # Reference: one call per image with its key, fold_in(key, index) (jax_vae.keys).
    one = jax.jit(score_fn)  # Compiled once; called image by image.
    expected = [float(one(params, images[i], jax.random.fold_in(key, i))) for i in range(50)]
    for chunk_size in (7, 64, 50):  # Partial chunks, one padded chunk, the whole set.
        got = scoring.score(params, images, score_fn=score_fn, key=key, chunk_size=chunk_size)
        assert got.shape == (50,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_stacked_params_without_stacked_say_what_to_pass():
    model, _ = _model_and_params("vae")
    stacked = jax.vmap(lambda k: model.init(k, jnp.zeros(784)))(
        jax.random.split(jax.random.key(0), 3)
    )
    with pytest.raises(ValueError, match="need stacked=True"):
        images = np.zeros((4, 784), np.float32)
        scoring.score(stacked, images, score_fn=model.score())


def test_reconstruction_score_is_pixel_mse():
    model, params = _model_and_params("ae")
    images = np.asarray(jax.random.uniform(jax.random.key(1), (5, 784)))
    got = scoring.score(params, images, score_fn=model.score())
    recon = np.asarray(model.module.apply(params, images))
    np.testing.assert_allclose(got, np.mean((images - recon) ** 2, axis=1), rtol=1e-5)


def test_vae_scores_against_direct_computation():
    model, params = _model_and_params("vae")
    x = jax.random.uniform(jax.random.key(1), (784,))
    key = jax.random.key(9)
    mean, logvar = model.module.apply(params, x, method="encode")
    draws = [models.reparameterize(k, mean, logvar) for k in jax.random.split(key, 4)]
    recons = [np.asarray(model.module.apply(params, z, method="decode")) for z in draws]
    xn = np.asarray(x)
    kl = 0.5 * np.sum(np.exp(logvar) + np.asarray(mean) ** 2 - 1 - np.asarray(logvar))
    mc = np.mean([np.mean((xn - r) ** 2) for r in recons])
    elbo = np.mean([np.sum((xn - r) ** 2) + kl for r in recons])
    at_mean = np.mean((xn - np.asarray(model.module.apply(params, mean, method="decode"))) ** 2)

    def score(kind):
        return float(model.score(vae_score=kind, mc_samples=4)(params, x, key))

    np.testing.assert_allclose(score("mc"), mc, rtol=1e-5)
    np.testing.assert_allclose(score("elbo"), elbo, rtol=1e-5)
    np.testing.assert_allclose(score("mean"), at_mean, rtol=1e-5)


def test_score_fn_rejects_bad_choices():
    model, _ = _model_and_params("vae")
    with pytest.raises(ValueError, match="vae_score"):
        model.score(vae_score="bogus")
    with pytest.raises(ValueError, match="mc_samples"):
        model.score(vae_score="mc", mc_samples=0)


def test_metrics_equal_sklearn_on_known_inputs():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    scores = np.array([0.1, 0.2, 0.35, 0.8, 0.4, 0.9, 0.7, 0.3, 0.95, 0.05])
    m = metrics.detection_metrics(labels, scores, threshold=0.5)
    predicted = (scores > 0.5).astype(int)  # [0,0,0,1,0,1,1,0,1,0]
    assert m.auroc == pytest.approx(skm.roc_auc_score(labels, scores))
    assert m.auprc == pytest.approx(skm.average_precision_score(labels, scores))
    # By hand: TP = 3 (0.9, 0.7, 0.95), FP = 1 (0.8), FN = 2, TN = 4.
    assert m.precision == pytest.approx(3 / 4)
    assert m.recall == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(skm.f1_score(labels, predicted)) and m.f1 == pytest.approx(2 / 3)
    assert m.fpr == pytest.approx(1 / 5)
    assert m.threshold == 0.5


def test_threshold_is_percentile_of_normals():
    normals = np.arange(101, dtype=np.float64)
    assert metrics.threshold_from_normals(normals, percentile=95) == pytest.approx(95.0)
    assert metrics.threshold_from_normals(normals, percentile=100) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        metrics.threshold_from_normals(normals, percentile=0)
    with pytest.raises(ValueError):
        metrics.threshold_from_normals(np.array([]))


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="both"):
        metrics.detection_metrics(np.zeros(4), np.arange(4.0), threshold=1.0)


def test_stacked_scores_equal_each_model_alone():
    model = registry.build("vae", **SIZES)
    keys = jax.random.split(jax.random.key(0), 3)
    stacked_params = jax.vmap(lambda k: model.init(k, jnp.zeros(784)))(keys)
    images = np.asarray(jax.random.uniform(jax.random.key(1), (30, 784)))
    score_fn = model.score(vae_score="mc", mc_samples=2)
    score_keys = jax.random.split(jax.random.key(7), 3)
    got = scoring.score(
        stacked_params, images, score_fn=score_fn, key=score_keys, chunk_size=8, stacked=True
    )
    assert got.shape == (3, 30)
    for k in range(3):
        alone = scoring.score(
            jax.tree.map(lambda a, k=k: a[k], stacked_params),
            images,
            score_fn=score_fn,
            key=score_keys[k],
            chunk_size=8,
        )
        np.testing.assert_allclose(got[k], alone, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_blur_matrix_equals_scipy_gaussian_filter(sigma):
    from scipy import ndimage

    image = np.random.default_rng(0).normal(size=(28, 28))
    blur = scoring.gaussian_blur_matrix(28, sigma)
    expected = ndimage.gaussian_filter(image, sigma, mode="constant")
    np.testing.assert_allclose(blur @ image @ blur.T, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kind", [("ae", "mean"), ("vae", "mean"), ("vae", "mc")])
def test_smoothed_scores_against_direct_computation(name, kind):
    from scipy import ndimage

    model, params = _model_and_params(name)
    x = jax.random.uniform(jax.random.key(1), (784,))
    key = jax.random.key(3)
    xn = np.asarray(x, np.float64)
    if name == "ae":
        recons = [np.asarray(model.module.apply(params, x))]
    elif kind == "mean":
        mean, _ = model.module.apply(params, x, method="encode")
        recons = [np.asarray(model.module.apply(params, mean, method="decode"))]
    else:
        mean, logvar = model.module.apply(params, x, method="encode")
        draws = [models.reparameterize(k, mean, logvar) for k in jax.random.split(key, 3)]
        recons = [np.asarray(model.module.apply(params, z, method="decode")) for z in draws]

    def blurred_mse(recon):
        residual = (xn - recon).reshape(28, 28)
        return np.mean(ndimage.gaussian_filter(residual, 1.5, mode="constant") ** 2)

    fn = model.score(vae_score=kind, mc_samples=3, smoothing=1.5)
    np.testing.assert_allclose(
        float(fn(params, x, key)), np.mean([blurred_mse(r) for r in recons]), rtol=1e-4
    )
    # Smoothing 0 is the plain MSE score.
    plain = model.score(vae_score=kind, mc_samples=3)
    zero = model.score(vae_score=kind, mc_samples=3, smoothing=0.0)
    assert float(zero(params, x, key)) == float(plain(params, x, key))


def test_smoothing_rejects_bad_settings():
    model, _ = _model_and_params("vae")
    with pytest.raises(ValueError, match="smoothing"):
        model.score(smoothing=-1.0)
    with pytest.raises(ValueError, match="smoothing needs a reconstruction score"):
        model.score(vae_score="elbo", smoothing=1.0)
    with pytest.raises(ValueError, match="square"):
        scoring.make_residual_error(1.0)(jnp.zeros(10), jnp.zeros(10))


@pytest.mark.parametrize("smoothing", [0.0, 1.5])
def test_anomaly_map_is_the_per_pixel_score(smoothing):
    rng = np.random.default_rng(0)
    x, x_hat = rng.uniform(size=(2, 784)).astype(np.float32)
    heat = scoring.anomaly_map(smoothing, (28, 28, 1))(x, x_hat)
    assert heat.shape == (28, 28, 1)
    # Its mean is the score that uses the same blur.
    np.testing.assert_allclose(float(jnp.mean(heat)),
                               float(scoring.make_residual_error(smoothing)(x, x_hat)), rtol=1e-6)


def test_shift_score_is_the_minimum_over_edge_padded_shifts():
    model, params = _model_and_params("ae")
    x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
    got = scoring.score(params, x, score_fn=scoring.shift_score(
        model.reconstruct(), smoothing=0.0, image_shape=(28, 28, 1)))  # fmt: skip
    for image, value in zip(x, got, strict=True):
        padded = np.pad(image.reshape(28, 28), 1, mode="edge")  # NumPy's edge padding.
        errors = []
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                shifted = padded[dy : dy + 28, dx : dx + 28].reshape(784)
                recon = np.asarray(model.reconstruct()(params, jnp.asarray(shifted)))
                errors.append(np.mean((shifted - recon) ** 2))
        np.testing.assert_allclose(value, min(errors), rtol=1e-5)
    assert scoring.shifted_images(jnp.asarray(x[0]), (28, 28, 1)).shape == (9, 784)


def test_knn_distance_equals_scikit_learn_neighbours():
    from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

    rng = np.random.default_rng(0)
    bank, points = rng.normal(size=(200, 6)), rng.normal(size=(7, 6))
    distances, _ = NearestNeighbors(n_neighbors=5).fit(bank).kneighbors(points)
    got = jax.vmap(lambda p: scoring.knn_distance(p, jnp.asarray(bank, jnp.float32), 5))(
        jnp.asarray(points, jnp.float32))  # fmt: skip
    np.testing.assert_allclose(got, np.mean(distances**2, axis=1), rtol=1e-4)


def test_a_fusion_standardizes_its_parts_on_the_held_out_scores():
    from jax_vae import registry, scores  # noqa: PLC0415

    model = registry.build("ae", hidden_dims=(8,), latent_dim=2)
    scorer = scores.scorer(model, [("residual", 0.0), ("latent_knn", 0.0)])
    assert scorer.components == (("residual", 0.0), ("latent_distance", None))
    rng = np.random.default_rng(0)
    val, test = rng.gamma(2.0, size=(50, 2)), rng.gamma(2.0, size=(20, 2))
    stats = scorer.standardize(val)
    got = scorer.combine(test, stats)

    def z(v, t):  # NumPy's standardization by the held-out scores.
        return (t - v.mean()) / v.std()

    np.testing.assert_array_equal(got[:, 0], test[:, 0])  # The residual as it is.
    np.testing.assert_allclose(got[:, 1], z(val[:, 0], test[:, 0]) + z(val[:, 1], test[:, 1]))
    np.testing.assert_allclose(scorer.combine(val, stats)[:, 1].mean(), 0.0, atol=1e-12)
    constant = np.ones((10, 2))  # No spread on the held-out normals: divided by 1, not 0.
    np.testing.assert_array_equal(scorer.combine(constant, scorer.standardize(constant))[:, 1], 0)


def test_rapp_and_map_scores_against_numpy(split0):
    from scipy import ndimage  # noqa: PLC0415

    from jax_vae import scores  # noqa: PLC0415

    model = registry.build("ae", **SIZES)
    train_images = split0.train_images[:400]
    params = train.train(jax.random.key(0), train_images, model=model, epochs=1, hooks=()).params
    columns = [(s, 1.0) for s in ("rapp_sap", "rapp_nap", "residual_max", "residual_top")]
    scorer = scores.scorer(model, columns, vae_score="mean", mc_samples=1, likelihood="gaussian")
    fitted = scorer.fit(params, train_images)
    x = np.asarray(data.as_images(split0.test_images[:50]), np.float64)
    got = scorer.combine(scoring.map_chunked(scorer.fn, scorer.inputs(params, fitted), x), {})

    w = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    enc, dec = w["encoder"], w["decoder"]["mlp"]

    def dense(h, layer):
        return h @ layer["kernel"] + layer["bias"]

    def relu(h):
        return np.maximum(h, 0)

    def hidden(v):  # The encoder's layer outputs (the code twice: the MLP's and its layer's).
        first = dense(v, enc["dense_0"])
        code = dense(relu(first), enc["dense_1"])
        return np.concatenate([code, first, code], axis=-1)

    def reconstruct(v):
        logits = dense(relu(dense(hidden(v)[..., -4:], dec["dense_0"])), dec["dense_1"])
        return 1 / (1 + np.exp(-logits))

    def diffs(v):
        return hidden(v) - hidden(reconstruct(v))

    np.testing.assert_allclose(got[:, 0], np.sum(diffs(x) ** 2, axis=1), rtol=2e-3)
    bank = diffs(np.asarray(data.as_images(train_images), np.float64))
    mean = bank.mean(axis=0)
    _, singular, rows = np.linalg.svd(bank - mean, full_matrices=False)
    keep = singular > scores.RANK_TOLERANCE * singular[0]
    z = (diffs(x) - mean) @ rows[keep].T / singular[keep]
    np.testing.assert_allclose(got[:, 1], np.sum(z**2, axis=1), rtol=2e-2)
    blurred = np.stack([ndimage.gaussian_filter(r.reshape(28, 28), 1.0, mode="constant")
                        for r in x - reconstruct(x)]) ** 2  # fmt: skip
    flat = np.sort(blurred.reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(got[:, 2], flat[:, -1], rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(got[:, 3], flat[:, -8:].mean(axis=1), rtol=2e-3, atol=1e-7)
