"""Flax Linen MLP autoencoder and VAE, used only through pure ``init``/``apply``.

Both models take flattened images ``[..., H * W * C]`` in [0, 1] (``image_shape``,
MNIST's 28x28x1 by default) and decode through a sigmoid. Use the methods with
``model.apply(params, x, method=Model.encode)``.
:mod:`jax_vae.registry` builds them by name, with their losses and scores.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_vae import spec
from jax_vae.data import NUM_PIXELS


class MLP(nn.Module):
    """Dense layers with ReLU between them and no activation after the last."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


ImageShape = tuple[int, int, int]  # Height, width, channels.
MNIST_SHAPE: ImageShape = (28, 28, 1)


class Decoder(nn.Module):
    """Latent -> hidden dims (reversed, ReLU) -> ``output_dim`` logits (784 by default)."""

    hidden_dims: Sequence[int]
    output_dim: int = NUM_PIXELS

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return MLP((*reversed(self.hidden_dims), self.output_dim), name="mlp")(z)


class AutoEncoder(nn.Module):
    """Deterministic autoencoder: pixels -> hidden (ReLU) -> latent -> mirror -> sigmoid.

    Attributes:
      hidden_dims: Widths of the encoder's hidden layers (the decoder mirrors them).
      latent_dim: Size of the code.
      image_shape: (height, width, channels) of the flattened images.
    """

    hidden_dims: Sequence[int] = spec.HIDDEN_DIMS
    latent_dim: int = spec.LATENT_DIM
    image_shape: ImageShape = MNIST_SHAPE

    def setup(self):
        # ReLU also after the last hidden layer, none on the code itself.
        self.encoder = MLP((*self.hidden_dims, self.latent_dim))
        self.decoder = Decoder(self.hidden_dims, math.prod(self.image_shape))

    def encode(self, x: jax.Array) -> jax.Array:
        """Returns the code of ``x``."""
        return self.encoder(x)

    def decode_logits(self, z: jax.Array) -> jax.Array:
        """Returns the decoder's pre-sigmoid output."""
        return self.decoder(z)

    def decode(self, z: jax.Array) -> jax.Array:
        """Returns the reconstruction in [0, 1]."""
        return nn.sigmoid(self.decode_logits(z))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


class VAEOutput(NamedTuple):
    """A VAE forward pass: reconstruction and the posterior's parameters."""

    reconstruction: jax.Array
    mean: jax.Array
    logvar: jax.Array


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Draws ``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``.

    Args:
      key: A PRNG key, used once.
      mean: Posterior mean.
      logvar: Posterior log-variance, same shape as ``mean``.

    Returns:
      One sample of z per entry of ``mean``.
    """
    chex.assert_equal_shape([mean, logvar])
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """Gaussian VAE: the encoder gives mean and log-variance of q(z|x).

    Attributes:
      hidden_dims: Widths of the encoder's hidden layers (the decoder mirrors them).
      latent_dim: Size of z.
      image_shape: (height, width, channels) of the flattened images.
    """

    hidden_dims: Sequence[int] = spec.HIDDEN_DIMS
    latent_dim: int = spec.LATENT_DIM
    image_shape: ImageShape = MNIST_SHAPE

    def setup(self):
        self.trunk = MLP(tuple(self.hidden_dims))
        self.mean_head = nn.Dense(self.latent_dim)
        self.logvar_head = nn.Dense(self.latent_dim)
        self.decoder = Decoder(self.hidden_dims, math.prod(self.image_shape))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns the mean and log-variance of q(z|x)."""
        h = nn.relu(self.trunk(x))
        return self.mean_head(h), self.logvar_head(h)

    def decode_logits(self, z: jax.Array) -> jax.Array:
        """Returns the decoder's pre-sigmoid output."""
        return self.decoder(z)

    def decode(self, z: jax.Array) -> jax.Array:
        """Returns the reconstruction in [0, 1]."""
        return nn.sigmoid(self.decode_logits(z))

    def __call__(self, x: jax.Array, key: jax.Array) -> VAEOutput:
        """Encodes, samples z with ``key`` and decodes."""
        mean, logvar = self.encode(x)
        z = reparameterize(key, mean, logvar)
        return VAEOutput(self.decode(z), mean, logvar)


# The convolutions as slices and matrix products. XLA's CPU backend runs the gradient
# convolutions of these strided layers as naive loops when they sit inside a loop body
# (the epoch's scan): 5x slower than the same step outside one (jax-ml/jax#12868). Slices
# and dots are fast everywhere, and give the same function as nn.Conv / nn.ConvTranspose
# with padding "SAME" (the same parameters: "kernel" [k, k, in, out] and "bias" [out]).


def _same_padding_before(size: int, kernel: int, stride: int) -> int:
    """The leading padding of lax's "SAME" for a strided convolution."""
    return max((-(-size // stride) - 1) * stride + kernel - size, 0) // 2


def _window(x: jax.Array, row: int, col: int, height: int, width: int) -> jax.Array:
    """x[..., row : row + height, col : col + width, :]."""
    return x[..., row : row + height, col : col + width, :]


class _Strided(nn.Module):
    """A k x k layer at stride s with nn.Conv's parameters: kernel [k, k, in, out], bias."""

    features: int
    kernel_size: int = 4
    stride: int = 2

    def parameters(self, channels: int) -> tuple[jax.Array, jax.Array]:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, channels, self.features))  # fmt: skip
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


def strided_correlation(x: jax.Array, kernel: jax.Array, stride: int, *, top: int, left: int,
                        out_h: int, out_w: int) -> jax.Array:  # fmt: skip
    """``out[u, v] = sum_ab x[s*u + a - top, s*v + b - left] @ kernel[a, b]`` (x zero outside)
    for x [..., H, W, in] and kernel [k, k, in, out], as one matrix product: the padded input
    is folded into s x s blocks (space to depth), so a k x k window at stride s is
    ceil(k / s)^2 unit-stride slices of the blocks, and the kernel (zero-padded to a multiple
    of s) is regrouped to match."""
    k, s, (height, width, channels) = kernel.shape[0], stride, x.shape[-3:]
    features = kernel.shape[-1]
    blocks = -(-k // s)  # Window size in blocks.
    kernel = jnp.pad(kernel, [(0, blocks * s - k)] * 2 + [(0, 0)] * 2)
    rows, cols = (out_h - 1 + blocks) * s, (out_w - 1 + blocks) * s
    lead = x.shape[:-3]
    # lax.pad: negative amounts crop (input rows no window reaches).
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] * len(lead) + [
        (top, rows - height - top, 0), (left, cols - width - left, 0), (0, 0, 0)])  # fmt: skip
    x = x.reshape(*lead, rows // s, s, cols // s, s, channels)
    x = jnp.moveaxis(x, -4, -3).reshape(*lead, rows // s, cols // s, s * s * channels)
    patches = jnp.concatenate(
        [_window(x, a, b, out_h, out_w) for a in range(blocks) for b in range(blocks)], axis=-1,
    )  # Order (block row, block col, row in block, col in block, channel).
    kernel = kernel.reshape(blocks, s, blocks, s, channels, features)
    return patches @ jnp.moveaxis(kernel, 2, 1).reshape(-1, features)


def _transpose_padding(k: int, s: int) -> int:
    """lax.conv_transpose's "SAME": the input dilated by s, padded by this in front."""
    return k - 1 if s > k - 1 else -(-(k + s - 2) // 2)


def _phase_products(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The transposed convolution (no bias) as one matrix product; see StridedConvTranspose."""
    k, s, (height, width, channels) = kernel.shape[0], stride, x.shape[-3:]
    features, pad = kernel.shape[-1], _transpose_padding(k, s)
    taps = [[(a, (r + a - pad) // s) for a in range(k) if (r + a - pad) % s == 0]
            for r in range(s)]  # fmt: skip
    offsets = sorted({o for phase in taps for _, o in phase})
    low, high, span = -offsets[0], offsets[-1], len(offsets)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(low, high), (low, high), (0, 0)])
    patches = jnp.concatenate([_window(x, low + oa, low + ob, height, width)
                               for oa in offsets for ob in offsets], axis=-1)  # fmt: skip
    weights = jnp.zeros((span, span, channels, s, s, features), kernel.dtype)
    for r, row_taps in enumerate(taps):
        for q, col_taps in enumerate(taps):
            for a, oa in row_taps:
                for b, ob in col_taps:
                    weights = weights.at[offsets.index(oa), offsets.index(ob), :, r,
                                         q].set(kernel[a, b])  # fmt: skip
    y = patches @ weights.reshape(span * span * channels, s * s * features)
    y = jnp.moveaxis(y.reshape(*y.shape[:-1], s, s, features), -3, -4)  # [..., H, r, W, q, F]
    return y.reshape(*y.shape[:-5], height * s, width * s, features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (s, s), "SAME")`` for x [..., H, W, in] and kernel
    [k, k, in, out], without XLA's convolutions (see StridedConvTranspose). Its gradient with
    respect to x is a strided correlation of the output's gradient with the flipped kernel,
    computed so (:func:`strided_correlation`): the differentiated matrix product would build
    the gradient of the patch matrix, 9 x in wide, and sum its nine shifted slices."""
    return _phase_products(x, kernel, stride)


def _conv_transpose_fwd(x, kernel, stride):
    return _phase_products(x, kernel, stride), (x, kernel)


def _conv_transpose_bwd(stride, saved, grad):
    x, kernel = saved
    k, (height, width) = kernel.shape[0], x.shape[-3:-1]
    # y[s*i + pad - a] += x[i] @ kernel[a], so dx[i] = sum_a dy[s*i + pad - a] @ kernel[a].T:
    # a correlation at stride s with the kernel flipped, its channels swapped.
    before = k - 1 - _transpose_padding(k, stride)
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    dx = strided_correlation(grad, flipped, stride, top=before, left=before, out_h=height,
                             out_w=width)  # fmt: skip
    _, kernel_vjp = jax.vjp(lambda w: _phase_products(x, w, stride), kernel)
    return dx, kernel_vjp(grad)[0]


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class StridedConv(_Strided):
    """``nn.Conv(features, (k, k), strides=(s, s), padding="SAME")`` as patches @ kernel
    (:func:`strided_correlation`)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, (height, width, channels) = self.kernel_size, self.stride, x.shape[-3:]
        kernel, bias = self.parameters(channels)
        return strided_correlation(
            x, kernel, s, top=_same_padding_before(height, k, s),
            left=_same_padding_before(width, k, s), out_h=-(-height // s), out_w=-(-width // s),
        ) + bias  # fmt: skip


class StridedConvTranspose(_Strided):
    """``nn.ConvTranspose(features, (k, k), strides=(s, s), padding="SAME")`` as one matrix
    product: output pixel ``s * i + r`` sees only the taps ``a`` with ``r + a - pad`` divisible
    by ``s``, applied to input pixel ``i + (r + a - pad) // s``; so every output phase (r, q) of
    input pixel (i, j) is a product of the same neighbourhood patch of (i, j) (the input pixels
    at those offsets), with the kernel's taps placed in a [patch, s * s * out] matrix (zeros
    where a phase does not see a pixel). One product over one patch matrix reads the input less
    often than one product per phase, which is what bounds these layers on a CPU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.parameters(x.shape[-1])
        return conv_transpose(x, kernel, self.stride) + bias


def conv_layers(backend: str | None = None) -> tuple[type, type]:
    """The stride-2, 4x4, "SAME" layers of the conv models: the slices-and-matmuls versions
    on the CPU (see above), Flax's own (cuDNN on a GPU, the TPU's convolutions) elsewhere.
    Both have the same parameters, so a checkpoint moves between backends."""
    if (backend or jax.default_backend()) == "cpu":
        return StridedConv, StridedConvTranspose

    def conv(features, name):
        return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", name=name)

    def transpose(features, name):
        return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", name=name)

    return conv, transpose


def padded(size: int, depth: int) -> int:
    """``size`` rounded up to a multiple of the conv models' total stride, 2 ** depth."""
    return -(-size // 2**depth) * 2**depth


class ConvEncoder(nn.Module):
    """[..., H*W*C] -> HxWxC, zero-padded to a multiple of the total stride -> strided 4x4
    convs (ReLU) -> flattened features."""

    channels: Sequence[int] = (32, 64)
    image_shape: ImageShape = MNIST_SHAPE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        height, width, depth = *self.image_shape[:2], len(self.channels)
        h = x.reshape(*x.shape[:-1], *self.image_shape)
        extra = (padded(height, depth) - height, padded(width, depth) - width)
        if any(extra):  # Bottom and right: the first pixels keep their place.
            h = jnp.pad(h, [(0, 0)] * (h.ndim - 3) + [(0, extra[0]), (0, extra[1]), (0, 0)])
        for i, c in enumerate(self.channels):
            h = nn.relu(conv_layers()[0](c, name=f"Conv_{i}")(h))
        return h.reshape(*h.shape[:-3], -1)


class ConvDecoder(nn.Module):
    """Latent -> dense -> transposed 4x4 convs mirroring the encoder -> the padded image,
    cropped back to HxWxC -> H*W*C logits."""

    channels: Sequence[int] = (32, 64)
    image_shape: ImageShape = MNIST_SHAPE

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        (height, width, colours), depth = self.image_shape, len(self.channels)
        rows, cols = padded(height, depth) // 2**depth, padded(width, depth) // 2**depth
        h = nn.relu(nn.Dense(rows * cols * self.channels[-1])(z))
        h = h.reshape(*z.shape[:-1], rows, cols, self.channels[-1])
        for i, c in enumerate((*reversed(self.channels[:-1]), colours)):
            h = conv_layers()[1](c, name=f"ConvTranspose_{i}")(h)
            h = nn.relu(h) if i < depth - 1 else h
        if h.shape[-3:-1] != (height, width):
            h = h[..., :height, :width, :]
        return h.reshape(*h.shape[:-3], math.prod(self.image_shape))


class ConvAutoEncoder(AutoEncoder):
    """The autoencoder with a small convolutional encoder and decoder.

    Attributes:
      hidden_dims: Channels of the strided convolutions, e.g. (32, 64); the image is
        padded to a multiple of 2 ** len(hidden_dims) and the output cropped back.
      latent_dim: Size of the code.
      image_shape: (height, width, channels) of the flattened images.
    """

    hidden_dims: Sequence[int] = (32, 64)

    def setup(self):
        self.features = ConvEncoder(tuple(self.hidden_dims), self.image_shape)
        self.code = nn.Dense(self.latent_dim)
        self.decoder = ConvDecoder(tuple(self.hidden_dims), self.image_shape)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.code(self.features(x))

    def decode_logits(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)


class ConvVAE(VAE):
    """The VAE with a small convolutional encoder and decoder (see ConvAutoEncoder)."""

    hidden_dims: Sequence[int] = (32, 64)

    def setup(self):
        self.features = ConvEncoder(tuple(self.hidden_dims), self.image_shape)
        self.mean_head = nn.Dense(self.latent_dim)
        self.logvar_head = nn.Dense(self.latent_dim)
        self.decoder = ConvDecoder(tuple(self.hidden_dims), self.image_shape)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.features(x)
        return self.mean_head(h), self.logvar_head(h)

    def decode_logits(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

