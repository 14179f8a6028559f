"""Training: every image every epoch, determinism, any optimizer, vmap over any
hyperparameter, the host driver equal to the pure function, divergence."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import SIZES

from jax_vae import data, keys, registry, scoring, train
from jax_vae.train import driver


def _images(n=300, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, 784))


def _with_loss(name, loss, **hparams):
    """Model ``name`` with another per-example loss (and the hyperparameters it reads)."""
    model = registry.build(name, **SIZES)
    spec = dataclasses.replace(model.spec, hparams=hparams)
    return dataclasses.replace(model, loss=loss, spec=spec)


def test_loss_decreases_on_real_data(split0):
    images = split0.train_images[:2000]
    for name in ("ae", "vae"):
        result = train.train(jax.random.key(0), images, model=registry.build(name), epochs=3,
                             name=name)  # fmt: skip
        total = result.history["total"]
        chex.assert_shape(total, (3,))
        assert total[-1] < 0.7 * total[0], (name, total)


def test_every_image_counts_once_per_epoch():
    # A loss whose value is the image's pixel sum: the epoch mean equals the mean
    # over all images only if each one is used exactly once (143 = 2 * 64 + 15,
    # so the last batch is partial).
    images = _images(143)

    def pixel_sum_loss(params, x, key, hparams):
        kernel = params["params"]["encoder"]["dense_0"]["kernel"]
        s = jnp.sum(x) + 0.0 * jnp.sum(kernel)  # Touch the params so grad is defined.
        return {"total": s, "pixels": s}

    model = _with_loss("ae", pixel_sum_loss)
    result = train.train(jax.random.key(0), images, model=model, epochs=2, batch_size=64)
    np.testing.assert_allclose(result.history["pixels"], [images.sum(1).mean()] * 2, rtol=1e-5)


def test_same_seed_same_parameters_other_seed_differs():
    images = _images()
    run = functools.partial(train.train, images=images, model=registry.build("vae", **SIZES),
                            epochs=2, batch_size=50)  # fmt: skip
    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    chex.assert_trees_all_equal(a.params, b.params)
    assert not np.allclose(
        a.params["params"]["mean_head"]["kernel"], c.params["params"]["mean_head"]["kernel"]
    )


def _kernel_sum_loss(params, x, key, hparams):
    # d total / d kernel = 1 for every entry, so an SGD step moves each entry by -lr.
    return {"total": jnp.sum(params["params"]["encoder"]["dense_0"]["kernel"]) + 0.0 * x[0]}


def test_any_optax_optimizer_and_the_learning_rate_as_a_vmapped_axis():
    images = _images(96)  # 3 steps of 32 per epoch.
    model = _with_loss("ae", _kernel_sum_loss)
    init = model.init(keys.init_keys(jax.random.key(0))[0], images[0])
    start = np.asarray(init["params"]["encoder"]["dense_0"]["kernel"])
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    trainer = train.make_train(model, tx=sgd, epochs=2, batch_size=32)
    state, _ = jax.jit(trainer)(jax.random.key(0), images, {})
    got = state.params["params"]["encoder"]["dense_0"]["kernel"]
    np.testing.assert_allclose(got, start - 6 * 0.1, rtol=1e-5, atol=1e-6)  # 6 steps of -lr.
    # Two learning rates, one program: each model moved by 6 of its own steps.
    lrs = jnp.array([0.1, 0.01])
    states, _ = jax.jit(jax.vmap(trainer, in_axes=(None, None, 0)))(
        jax.random.key(0), images, {"learning_rate": lrs}
    )
    for i, lr in enumerate(np.asarray(lrs)):
        np.testing.assert_allclose(states.params["params"]["encoder"]["dense_0"]["kernel"][i],
                                   start - 6 * lr, rtol=1e-5, atol=1e-6)  # fmt: skip
    # A plain optimizer cannot take the learning rate from hparams: said, not ignored.
    plain = train.make_train(model, tx=optax.sgd(0.1), epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        plain(jax.random.key(0), images, {"learning_rate": 0.1})


def test_pure_function_vmapped_over_betas_equals_the_host_driver():
    images = _images()
    model = registry.build("vae", **SIZES)
    trainer = train.make_train(model, epochs=2, batch_size=64)
    betas = jnp.array([0.5, 4.0])
    keys = jax.random.split(jax.random.key(0), 2)
    state, history = jax.jit(jax.vmap(trainer, in_axes=(0, None, 0)))(
        keys, images, {"beta": betas}
    )
    for i in range(2):
        single = train.train(keys[i], images, {"beta": betas[i]}, model=model, epochs=2,
                             batch_size=64, hooks=())  # fmt: skip
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], state.params), single.params, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(history["total"][i], single.history["total"], rtol=1e-4)
    # The two betas really trained different models.
    assert not np.allclose(history["kl"][0], history["kl"][1])


def test_batched_driver_equals_separate_runs():
    images = _images()
    model = registry.build("vae", **SIZES)
    keys = jax.random.split(jax.random.key(1), 3)
    betas = jnp.array([1.0, 2.0, 8.0])
    run = functools.partial(train.train, model=model, epochs=2, batch_size=64, hooks=())
    singles = [run(keys[i], images, {"beta": betas[i]}) for i in range(3)]
    for group_size in (0, 2):  # All vmapped; pairs plus a remainder (lax.map).
        batched = run(keys, images, {"beta": betas}, group_size=group_size)
        chex.assert_shape(batched.history["total"], (3, 2))
        for i in range(3):
            np.testing.assert_allclose(
                batched.history["total"][i], singles[i].history["total"], rtol=1e-4
            )


def test_padding_to_one_size_trains_the_same_numbers_bit_for_bit():
    # Padded training sets let one compiled epoch serve every class of a grid; it must not
    # change any number. 300 and 400 images need the same sort rounds; with batches of 64,
    # 400 adds two steps of padding only after the same partial last batch.
    model = registry.build("vae", **SIZES)
    keys = jax.random.split(jax.random.key(2), 3)  # Pairs plus a remainder on the CPU.
    run = functools.partial(train.train, keys, _images(300), {"beta": jnp.array([1.0, 2, 4])},
                            model=model, epochs=2, batch_size=64, hooks=())  # fmt: skip
    padded, plain = run(pad_to=400), run()
    chex.assert_trees_all_equal(padded.params, plain.params)
    chex.assert_trees_all_equal(padded.history, plain.history)
    with pytest.raises(ValueError, match="pad_to"):  # Another number of sort rounds.
        train.check_padding(300, 3_000_000)


def test_padded_permutation_is_jax_random_permutation():
    permutation = jax.jit(train.permutation, static_argnums=2)
    for n, size in ((2, 1000), (999, 1000), (1626, 5000), (5000, 5000)):
        for seed in range(3):
            key = jax.random.key(seed)
            got = np.asarray(permutation(key, jnp.int32(n), size))
            np.testing.assert_array_equal(got[:n], jax.random.permutation(key, n))
            np.testing.assert_array_equal(np.sort(got[n:]), np.arange(n, size))
    assert train.padded_sizes([1000, 1500, 2000, 6000]) == {1000: 1500, 1500: 1500,
                                                            2000: 6000, 6000: 6000}


def test_non_finite_loss_names_the_epoch():
    def exploding(params, x, key, hparams):
        kernel = params["params"]["encoder"]["dense_0"]["kernel"]
        return {"total": jnp.sum(x) * jnp.exp(jnp.sum(kernel) * 1e6)}  # inf after one update.

    with pytest.raises(train.NonFiniteLossError, match=r"epoch \d+/5"):
        train.train(jax.random.key(0), _images(100), model=_with_loss("ae", exploding),
                    tx=optax.adam(10.0), epochs=5, batch_size=50)  # fmt: skip


def test_rejects_bad_batch_size_and_mismatched_hyperparameters():
    images = _images(10)
    model = registry.build("vae", **SIZES)
    with pytest.raises(ValueError, match="batch_size"):
        train.train(jax.random.key(0), images, model=model, batch_size=11, epochs=1)
    with pytest.raises(ValueError, match=r"hparams\['beta'\]"):
        train.train(jax.random.split(jax.random.key(0), 2), images, {"beta": jnp.ones(3)},
                    model=model, epochs=1, batch_size=5)  # fmt: skip


def test_epoch_is_traced_once_not_per_epoch():
    model = registry.build("ae", **SIZES)
    # chex counts the traces of the wrapped loss: only tracing runs it, never compiled code.
    counted = dataclasses.replace(model, loss=chex.assert_max_traces(model.loss, n=1))
    train.train(jax.random.key(0), _images(64), model=counted, epochs=4, batch_size=32)


def test_uint8_and_image_shaped_arrays_train_as_their_scaled_flat_floats(mnist):
    raw = mnist.train_images[:256]  # uint8 [N, 28, 28], as a user's array comes.
    floats = raw.reshape(256, 784).astype(np.float64) / 255.0  # NumPy's own scaling.
    model = registry.build("ae", **SIZES)
    run = functools.partial(train.train, jax.random.key(0), model=model, epochs=2, batch_size=64,
                            hooks=())  # fmt: skip
    reference = run(floats.astype(np.float32))
    for images in (raw, raw[..., None], floats.reshape(256, 28, 28).astype(np.float32),
                   jax.device_put(raw)):  # On the device: scaled there, the same floats.
        np.testing.assert_allclose(run(images).history["total"], reference.history["total"],
                                   rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(data.as_images(jax.device_put(raw)), data.as_images(raw))
    scores = scoring.map_chunked(model.score(), reference.params, raw[:20])
    np.testing.assert_allclose(scores, scoring.map_chunked(model.score(), reference.params,
                                                           floats[:20]), rtol=1e-5)  # fmt: skip
    # Unscaled floats are refused, not trained on (they gave an AE loss of ~5e6).
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got floats in \[0, 255\]"):
        run(raw.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 .* or floats"):
        run(raw.astype(np.int64))


def test_an_equal_model_reuses_its_compiled_programs():
    # Equal requests give one model, one score function and one optimizer, so a second
    # training builds no program; the init program does not depend on the set's size.
    from benchmarks.accelerator import counting_compiles  # noqa: PLC0415

    def model():
        return registry.build("vae", hidden_dims=(16,), latent_dim=3)

    assert model() is model() and model().score(smoothing=1.0) is model().score(smoothing=1.0)
    assert train.adam(1e-2) is train.adam(1e-2) and train.adam(1e-3) is train.ADAM
    images = _images(300)
    run = functools.partial(train.train, jax.random.key(0), model=model(), tx=train.adam(1e-2),
                            epochs=1, batch_size=64, hooks=())  # fmt: skip
    run(images)
    with counting_compiles() as again:
        run(images)
    assert [name for name, _ in again if "train_epoch" in name or "init" in name] == []
    with counting_compiles() as smaller:
        run(images[:250])  # Another size: its own epoch, the same init.
    assert [name for name, _ in smaller if "init" in name] == []


def test_a_restore_template_is_shaped_as_the_initial_state_without_an_init_program():
    from benchmarks.accelerator import counting_compiles  # noqa: PLC0415

    trainer = train.make_train(registry.build("vae", hidden_dims=(16,), latent_dim=3),
                               tx=train.adam(1e-2, injected=True))  # fmt: skip
    keys, x, hparams = jax.random.split(jax.random.key(0), 2), _images(1)[0], {
        "beta": jnp.ones(2), "learning_rate": jnp.full(2, 1e-2)}
    init = jax.vmap(trainer.init_from, in_axes=(0, None, 0))
    with counting_compiles() as built:
        template = train.state_template(init, keys, x, hparams)
    # Zeros only: nothing initializes or draws random numbers, eagerly or compiled.
    assert not [name for name, _ in built
                if any(w in name for w in ("init", "normal", "uniform", "threefry"))]  # fmt: skip
    state = jax.jit(init)(keys, x, hparams)
    assert jax.tree.structure(template) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(template), jax.tree.leaves(state), strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)


def test_a_gradient_accumulated_over_slices_trains_as_the_whole_batch(split0, monkeypatch):
    images = split0.train_images[:300]
    model = registry.build("vae", **SIZES)
    whole = train.train(jax.random.key(0), images, model=model, epochs=2, hooks=(),
                        microbatches=1)  # fmt: skip
    sliced = train.train(jax.random.key(0), images, model=model, epochs=2, hooks=(),
                         microbatches=4)  # fmt: skip
    assert sliced.microbatches == 4
    chex.assert_trees_all_close(sliced.params, whole.params, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(sliced.history, whole.history, rtol=1e-5)
    # Chosen by the step's memory: over the budget, the fewest slices that fit it.
    monkeypatch.setattr(driver, "STEP_MEMORY", 1)
    auto = train.train(jax.random.key(0), images, model=model, epochs=2, hooks=())
    assert auto.microbatches == 128  # One image at a time: nothing else fits in 1 byte.
    chex.assert_trees_all_close(auto.params, whole.params, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="microbatches"):
        train.make_train(model, microbatches=3)
