"""The transform classifier (jax_vae.transforms) and its scores, against NumPy."""

import jax
import numpy as np
import pytest
from helpers import SIZES
from sklearn.metrics import roc_auc_score

from jax_vae import data, registry, scores, scoring, train, transforms


def numpy_transform(image: np.ndarray, index: int) -> np.ndarray:
    """GEOM's transform ``index`` with NumPy: flip, shift down, shift across, rotate."""
    rotations = 4 if image.shape[0] == image.shape[1] else 2
    rotation, rest = index % rotations, index // rotations
    across, rest = rest % 3, rest // 3
    down, flip = rest % 3, rest // 3
    x = np.flip(image, axis=1) if flip else image
    x = np.roll(x, (0, 1, -1)[down] * round(image.shape[0] / 4), axis=0)
    x = np.roll(x, (0, 1, -1)[across] * round(image.shape[1] / 4), axis=1)
    return np.rot90(x, rotation * (4 // rotations))


@pytest.mark.parametrize("shape", [(28, 28, 1), (12, 20, 3)])
def test_the_transforms_are_geoms_flips_shifts_and_rotations(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    n = transforms.count(shape)
    assert n == (72 if shape[0] == shape[1] else 36)
    got = jax.vmap(transforms.transform, in_axes=(None, 0))(image, np.arange(n))
    for i in range(n):
        np.testing.assert_array_equal(got[i], numpy_transform(image, i))
    assert len({np.asarray(g).tobytes() for g in got}) == n  # All different.


@pytest.fixture(scope="module")
def fitted(split0):
    images = np.asarray(data.as_images(split0.train_images[:256]))
    return images, transforms.fit(jax.random.key(0), images, (28, 28, 1), epochs=20)


def test_the_score_is_the_mean_negative_log_likelihood_of_the_right_transform(fitted, split0):
    _, params = fitted
    x = np.asarray(data.as_images(split0.test_images[:8]), np.float64)
    got = jax.vmap(lambda v: transforms.score(params, v, (28, 28, 1)))(x.astype(np.float32))
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}

    def classify(v):
        h = np.maximum(v @ w["params.Dense_0.kernel"] + w["params.Dense_0.bias"], 0)
        return h @ w["params.Dense_1.kernel"] + w["params.Dense_1.bias"]

    for j, image in enumerate(x):
        logits = np.stack([classify(numpy_transform(image.reshape(28, 28, 1), i).reshape(-1))
                           for i in range(72)])  # fmt: skip
        log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                keepdims=True)) - logits.max(1, keepdims=True)  # fmt: skip
        np.testing.assert_allclose(got[j], -np.mean(np.diag(log_p)), rtol=1e-4)


def test_the_classifier_tells_the_normals_transforms_better_than_other_classes(fitted, split0):
    """Trained on 256 zeros (training split), it is surer of held-out zeros' transforms than
    of other digits'; a classifier that learned nothing would score both alike."""
    _, params = fitted
    normal = np.asarray(data.as_images(split0.val_images[:100]))
    others = data.load_dataset("bundled")
    pick = others.train_labels != 0
    anomalies = np.asarray(data.as_images(others.train_images[pick][:100]))
    score = jax.jit(jax.vmap(lambda v: transforms.score(params, v, (28, 28, 1))))
    s_normal, s_anomaly = np.asarray(score(normal)), np.asarray(score(anomalies))
    auroc = roc_auc_score(np.r_[np.zeros(100), np.ones(100)], np.r_[s_normal, s_anomaly])
    assert auroc > 0.75
    assert s_normal.mean() < np.log(72) / 2  # Surer than a uniform guess (log 72).


def test_the_geom_score_fits_with_the_models_key_and_reproduces(split0):
    model = registry.build("ae", **SIZES)
    images = split0.train_images[:200]
    params = train.train(jax.random.key(0), images, model=model, epochs=1, hooks=()).params
    scorer = scores.scorer(model, [("residual_geom", 0.0)], vae_score="mean", mc_samples=1,
                           likelihood="gaussian")  # fmt: skip
    with pytest.raises(ValueError, match="pass a key"):
        scorer.fit(params, images)
    key = jax.random.key(3)
    a, b = scorer.fit(params, images, key=key), scorer.fit(params, images, key=key)
    c = scorer.fit(params, images, key=jax.random.key(4))
    x = split0.test_images[:20]

    def columns(fitted):
        return np.asarray(scoring.map_chunked(scorer.fn, scorer.inputs(params, fitted),
                                              np.asarray(data.as_images(x))))  # fmt: skip

    np.testing.assert_array_equal(columns(a), columns(b))
    assert not np.array_equal(columns(a), columns(c))
    # Stacked models fit one classifier each, with their own keys: model i's is the one
    # fitted alone with key i.
    stacked = jax.tree.map(lambda p: np.stack([p, p]), params)
    both = scorer.fit(stacked, images, key=jax.random.split(key, 2), stacked=True)
    alone = scorer.fit(params, images, key=jax.random.split(key, 2)[1])
    for name, value in alone["geom"].items():
        np.testing.assert_allclose(both["geom"][name][1], value, rtol=1e-5, atol=1e-6)
