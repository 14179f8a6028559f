"""Models, reparameterization and per-example losses against NumPy references."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vae import losses, models, registry


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_model_shapes_and_output_range(name):
    model = registry.build(name, hidden_dims=(64, 32), latent_dim=5)
    x = jax.random.uniform(jax.random.key(0), (7, 784))
    params = model.init(jax.random.key(1), x)
    if name == "ae":
        out = model.module.apply(params, x)
        chex.assert_shape(model.module.apply(params, x, method="encode"), (7, 5))
    else:
        result = model.module.apply(params, x, jax.random.key(2))
        chex.assert_shape([result.mean, result.logvar], (7, 5))
        out = result.reconstruction
    chex.assert_shape(out, (7, 784))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Layer widths: 784 -> 64 -> 32 -> latent -> 32 -> 64 -> 784.
    kernels = [k.shape for k in jax.tree.leaves(params) if k.ndim == 2]
    assert (784, 64) in kernels and (64, 32) in kernels and (32, 784) not in kernels
    assert (64, 784) in kernels


def test_default_architecture_is_784_400_20():
    model = registry.build("vae")
    params = model.init(jax.random.key(0), jnp.zeros(784))
    shapes = jax.tree.map(lambda a: a.shape, params["params"])
    assert shapes["trunk"]["dense_0"]["kernel"] == (784, 400)
    assert shapes["mean_head"]["kernel"] == (400, 20)
    assert shapes["logvar_head"]["kernel"] == (400, 20)
    assert shapes["decoder"]["mlp"]["dense_0"]["kernel"] == (20, 400)
    assert shapes["decoder"]["mlp"]["dense_1"]["kernel"] == (400, 784)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="name must be one of ae, vae"):
        registry.build("gan")
    with pytest.raises(ValueError, match="registered already"):
        registry.register("vae", registry.get("ae"))


def test_reparameterize_statistics():
    mean = jnp.array([1.0, -2.0, 0.5])
    logvar = jnp.log(jnp.array([0.25, 4.0, 1.0]))
    keys = jax.random.split(jax.random.key(0), 20000)
    z = jax.vmap(models.reparameterize, in_axes=(0, None, None))(keys, mean, logvar)
    np.testing.assert_allclose(z.mean(axis=0), mean, atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), jnp.exp(0.5 * logvar), rtol=0.03)
    # Different keys give different draws; the same key the same draw.
    assert not np.allclose(z[0], z[1])
    np.testing.assert_array_equal(
        models.reparameterize(keys[3], mean, logvar), models.reparameterize(keys[3], mean, logvar)
    )


def test_reparameterize_rejects_shape_mismatch():
    with pytest.raises(AssertionError):
        models.reparameterize(jax.random.key(0), jnp.zeros(3), jnp.zeros(4))


def _np_kl(mean, logvar):
    return 0.5 * np.sum(np.exp(logvar) + mean**2 - 1 - logvar, axis=-1)


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 784)).astype(np.float32)
    x_hat = rng.uniform(size=(6, 784)).astype(np.float32)
    mean = rng.normal(size=(6, 20)).astype(np.float32)
    logvar = rng.normal(size=(6, 20)).astype(np.float32)
    np.testing.assert_allclose(
        jax.vmap(losses.squared_error)(x, x_hat), np.sum((x - x_hat) ** 2, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        jax.vmap(losses.kl_divergence)(mean, logvar), _np_kl(mean, logvar), rtol=1e-5
    )
    terms = jax.vmap(losses.beta_vae_loss, in_axes=(0, 0, 0, 0, None))(x, x_hat, mean, logvar, 2.5)
    np.testing.assert_allclose(
        terms["total"], np.sum((x - x_hat) ** 2, axis=-1) + 2.5 * _np_kl(mean, logvar), rtol=1e-5
    )
    chex.assert_shape(list(terms.values()), (6,))


def test_kl_is_zero_for_standard_normal_posterior():
    assert float(losses.kl_divergence(jnp.zeros(20), jnp.zeros(20))) == 0.0
    assert float(losses.kl_divergence(jnp.ones(20), jnp.zeros(20))) > 0.0


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_example_loss_matches_model(name):
    model = registry.build(name, hidden_dims=(16,), latent_dim=3)
    x = jax.random.uniform(jax.random.key(0), (784,))
    params = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    terms = model.loss(params, x, key, {"beta": 3.0})
    if name == "ae":
        expected_recon = np.sum((np.asarray(x) - np.asarray(model.module.apply(params, x))) ** 2)
        np.testing.assert_allclose(terms["reconstruction"], expected_recon, rtol=1e-5)
        assert set(terms) == {"total", "reconstruction"}  # No KL term, no beta.
        assert float(terms["total"]) == float(terms["reconstruction"])
    else:
        out = model.module.apply(params, x, key)
        kl = _np_kl(np.asarray(out.mean), np.asarray(out.logvar))
        recon = np.sum((np.asarray(x) - np.asarray(out.reconstruction)) ** 2)
        np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
        np.testing.assert_allclose(terms["total"], recon + 3.0 * kl, rtol=1e-5)


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_conv_models_shapes_and_one_training_epoch(name):
    model = registry.build(name, hidden_dims=(4, 8), latent_dim=3, architecture="conv")
    x = jax.random.uniform(jax.random.key(0), (6, 784))
    params = model.init(jax.random.key(1), x[0])
    kernels = {k.shape for k in jax.tree.leaves(params) if k.ndim == 4}
    assert (4, 4, 1, 4) in kernels and (4, 4, 4, 8) in kernels  # 28 -> 14 -> 7.
    from jax_vae import train

    @jax.jit  # One program, not one per operation.
    def forward_and_loss(params, x):
        args = (x, jax.random.key(2)) if name == "vae" else (x,)
        loss = jax.vmap(model.loss, in_axes=(None, 0, None, None))
        return model.module.apply(params, *args), loss(params, x, jax.random.key(0), {"beta": 1.0})

    out, terms = forward_and_loss(params, x)
    if name == "vae":
        chex.assert_shape([out.mean, out.logvar], (6, 3))
        recon = out.reconstruction
    else:
        recon = out
        # The per-example loss (unbatched input) equals the batched forward pass.
        np.testing.assert_allclose(terms["reconstruction"], ((x - recon) ** 2).sum(1), rtol=1e-5)
    chex.assert_shape(recon, (6, 784))
    result = train.train(jax.random.key(3), x, model=model, epochs=1, batch_size=3)
    assert np.isfinite(result.history["total"]).all()
    with pytest.raises(ValueError, match="architecture"):
        registry.build(name, architecture="transformer")


LAYERS = [  # (ours, the Flax layer it must equal, input shape, kernel, stride)
    (models.StridedConv, nn.Conv, (2, 28, 28, 1), 4, 2),
    (models.StridedConv, nn.Conv, (9, 7, 3), 3, 2),  # One image, odd sizes: uneven padding.
    (models.StridedConvTranspose, nn.ConvTranspose, (2, 7, 7, 4), 4, 2),
    (models.StridedConvTranspose, nn.ConvTranspose, (5, 4, 2), 3, 3),
    (models.StridedConvTranspose, nn.ConvTranspose, (2, 5, 6, 3), 5, 2),  # A wider window.
    (models.StridedConvTranspose, nn.ConvTranspose, (2, 5, 6, 3), 2, 2),  # No overlap.
]


@pytest.mark.parametrize("ours,flax_layer,shape,k,s", LAYERS)
def test_strided_convolutions_equal_flax_layers_and_gradients(ours, flax_layer, shape, k, s):
    # The slices-and-matmuls layers compute nn.Conv / nn.ConvTranspose ("SAME") with the
    # same parameters: values and gradients, within float32 rounding.
    x = jax.random.normal(jax.random.key(0), shape)
    reference = flax_layer(5, (k, k), strides=(s, s), padding="SAME")
    params = reference.init(jax.random.key(1), x)
    params = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape), params)
    layer = ours(5, kernel_size=k, stride=s)
    assert jax.tree.map(jnp.shape, layer.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params)  # Same parameter tree: checkpoints carry over.

    @jax.jit
    def values_and_grads(p, x):
        outputs = [module.apply(p, x) for module in (layer, reference)]
        grads = [jax.grad(lambda p, x, m=m: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(p, x)
                 for m in (layer, reference)]  # fmt: skip
        return outputs, grads

    (ours_out, flax_out), (ours_grads, flax_grads) = values_and_grads(params, x)
    np.testing.assert_allclose(ours_out, flax_out, atol=2e-5)
    chex.assert_trees_all_close(ours_grads, flax_grads, atol=1e-4, rtol=1e-5)


def test_conv_models_use_flax_convolutions_off_the_cpu_with_the_same_parameters(monkeypatch):
    model = registry.build("vae", hidden_dims=(4, 8), latent_dim=3, architecture="conv")
    x = jax.random.uniform(jax.random.key(0), (2, 784))
    params = model.init(jax.random.key(1), x[0])
    on_cpu = model.reconstruct()(params, x)  # Encoder and decoder.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # As the module sees a GPU.
    assert models.conv_layers()[0](4, name="c").__class__ is nn.Conv
    # The same parameter tree (a checkpoint moves between backends) and the same function.
    assert jax.tree.map(jnp.shape, model.init(jax.random.key(1), x[0])) == jax.tree.map(
        jnp.shape, params)
    chex.assert_trees_all_close(model.reconstruct()(params, x), on_cpu, atol=2e-5)
