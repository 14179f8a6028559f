"""Training: every image every epoch, determinism, vmap over beta and seed, divergence."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vae import losses, models, train

SMALL = dict(hidden_dims=(32,), latent_dim=4)


def _images(n=300, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, 784))


def test_loss_decreases_on_real_data(split0):
    images = split0.train_images[:2000]
    for name in ("ae", "vae"):
        result = train.train(
            jax.random.key(0), images, model=models.make_model(name), beta=1.0, epochs=3, name=name
        )
        total = result.history.total
        chex.assert_shape(total, (3,))
        assert total[-1] < 0.7 * total[0], (name, total)


def test_every_image_counts_once_per_epoch():
    # A loss whose value is the image's pixel sum: the epoch mean equals the mean
    # over all images only if each one is used exactly once (143 = 2 * 64 + 15,
    # so the last batch is partial).
    images = _images(143)

    def pixel_sum_loss(params, x, key, beta):
        del key, beta
        kernel = params["params"]["encoder"]["dense_0"]["kernel"]
        s = jnp.sum(x) + 0.0 * jnp.sum(kernel)  # Touch the params so grad is defined.
        return losses.LossTerms(s, s, jnp.zeros_like(s))

    result = train.train(
        jax.random.key(0),
        images,
        model=models.make_model("ae", **SMALL),
        epochs=2,
        batch_size=64,
        loss_fn=pixel_sum_loss,
    )
    np.testing.assert_allclose(result.history.reconstruction, [images.sum(1).mean()] * 2, rtol=1e-5)


def test_same_seed_same_parameters_other_seed_differs():
    images = _images()
    model = models.make_model("vae", **SMALL)
    run = functools.partial(
        train.train, images=images, model=model, beta=1.0, epochs=2, batch_size=50
    )
    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    chex.assert_trees_all_equal(a.params, b.params)
    assert not np.allclose(
        a.params["params"]["mean_head"]["kernel"], c.params["params"]["mean_head"]["kernel"]
    )


def test_vmap_over_betas_equals_separate_runs():
    images = _images()
    model = models.make_model("vae", **SMALL)
    kwargs = dict(model=model, epochs=2, batch_size=64)
    betas = jnp.array([0.5, 4.0])
    keys = jax.random.split(jax.random.key(0), 2)
    vmapped = jax.jit(
        jax.vmap(functools.partial(train.train_scan, **kwargs), in_axes=(0, None, 0))
    )(keys, images, betas)
    for i in range(2):
        single = train.train(keys[i], images, beta=float(betas[i]), **kwargs)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], vmapped.params), single.params, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(vmapped.history.total[i], single.history.total, rtol=1e-4)
    # The two betas really trained different models.
    assert not np.allclose(vmapped.history.kl[0], vmapped.history.kl[1])


def test_batched_driver_equals_separate_runs():
    images = _images()
    model = models.make_model("vae", **SMALL)
    keys = jax.random.split(jax.random.key(1), 3)
    betas = jnp.array([1.0, 2.0, 8.0])
    run = functools.partial(train.train, model=model, epochs=2, batch_size=64)
    singles = [run(keys[i], images, float(betas[i])) for i in range(3)]
    for group_size in (0, 2):  # All vmapped; pairs plus a remainder (lax.map).
        batched = run(keys, images, betas, group_size=group_size)
        chex.assert_shape(batched.history.total, (3, 2))
        for i in range(3):
            np.testing.assert_allclose(
                batched.history.total[i], singles[i].history.total, rtol=1e-4
            )


def test_non_finite_loss_names_the_epoch():
    images = _images(100)

    def exploding(params, x, key, beta):
        del key, beta
        kernel = params["params"]["encoder"]["dense_0"]["kernel"]
        s = jnp.sum(x) * jnp.exp(jnp.sum(kernel) * 1e6)  # inf after the first update.
        return losses.LossTerms(s, s, jnp.zeros_like(s))

    with pytest.raises(train.NonFiniteLossError, match=r"epoch \d+/5"):
        train.train(
            jax.random.key(0),
            images,
            model=models.make_model("ae", **SMALL),
            epochs=5,
            batch_size=50,
            loss_fn=exploding,
            learning_rate=10.0,
        )


def test_rejects_bad_batch_size_and_mismatched_batch():
    images = _images(10)
    model = models.make_model("ae", **SMALL)
    with pytest.raises(ValueError, match="batch_size"):
        train.train(jax.random.key(0), images, model=model, batch_size=11, epochs=1)
    with pytest.raises(ValueError, match="both be scalars or both"):
        train.train(
            jax.random.split(jax.random.key(0), 2),
            images,
            model=model,
            beta=1.0,
            epochs=1,
            batch_size=5,
        )


def test_epoch_is_traced_once_not_per_epoch():
    traces = []

    def counting_loss(params, x, key, beta):
        traces.append(1)  # Runs only while JAX traces, never when compiled code runs.
        return losses.make_example_loss(models.make_model("ae", **SMALL))(params, x, key, beta)

    train.train(
        jax.random.key(0),
        _images(64),
        model=models.make_model("ae", **SMALL),
        epochs=4,
        batch_size=32,
        loss_fn=counting_loss,
    )
    assert len(traces) == 1
