"""The conv AE's epoch before and after the slices-and-matmuls layers, and PyTorch's.

  python -m benchmarks.conv_profile [PYTHON_WITH_TORCH] > compare.txt

One process times an epoch (median of the 2nd and 3rd, through ``jax_vae.train.train``) of
the conv AE (--architecture=conv --hidden_dims=32,64) built from Flax's ``nn.Conv`` /
``nn.ConvTranspose`` (the layers before) and from ``jax_vae.models.StridedConv`` /
``StridedConvTranspose`` (now), profiles the second, then runs ``conv_profile_torch.py`` (the
same network in PyTorch) with the given interpreter. Its output is
``experiments/results/conv_profile/compare.txt``.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from benchmarks import throughput
from jax_vae import data, losses, models, registry, train


class FlaxConvEncoder(nn.Module):
    """models.ConvEncoder with Flax's convolution layer."""

    channels: tuple = (32, 64)

    @nn.compact
    def __call__(self, x):
        h = x.reshape(*x.shape[:-1], 28, 28, 1)
        for c in self.channels:
            h = nn.relu(nn.Conv(c, (4, 4), strides=(2, 2), padding="SAME")(h))
        return h.reshape(*h.shape[:-3], -1)


class FlaxConvDecoder(nn.Module):
    """models.ConvDecoder with Flax's transposed convolution layer."""

    channels: tuple = (32, 64)

    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(7 * 7 * self.channels[-1])(z))
        h = h.reshape(*z.shape[:-1], 7, 7, self.channels[-1])
        for c in (*reversed(self.channels[:-1]), 1):
            h = nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME")(h)
            h = nn.relu(h) if c != 1 else h
        return h.reshape(*h.shape[:-3], 784)


class FlaxConvAutoEncoder(models.ConvAutoEncoder):
    def setup(self):
        self.features = FlaxConvEncoder(tuple(self.hidden_dims))
        self.code = nn.Dense(self.latent_dim)
        self.decoder = FlaxConvDecoder(tuple(self.hidden_dims))


def main(torch_python: str) -> None:
    split = data.one_class_split(data.load_dataset("bundled"), normal_class=0)
    images = jax.device_put(split.train_images)
    steps = train.num_batches(images.shape[0], 128)
    candidates = {
        "flax nn.Conv (before)": FlaxConvAutoEncoder(hidden_dims=(32, 64), latent_dim=20),
        "slices + matmuls (now)": models.ConvAutoEncoder(hidden_dims=(32, 64), latent_dim=20),
    }  # fmt: skip
    candidates = {label: registry.Model("ae", m, registry.get("ae"), losses.autoencoder_loss(m))
                  for label, m in candidates.items()}  # fmt: skip
    epochs = {}
    for label, model in candidates.items():
        seconds = []
        result = train.train(jax.random.key(0), images, model=model, epochs=3,
                             hooks=(lambda e, s=seconds: s.append(e.seconds),))  # fmt: skip
        epochs[label] = float(np.median(seconds[1:]))
        print(f"{label:<24} epoch {epochs[label]:6.2f} s  ({epochs[label] / steps * 1e3:5.0f} "
              f"ms/step, {steps} steps), compile {result.compile_seconds:.1f} s")
    profiled, matmuls = throughput.profile_epoch(candidates["slices + matmuls (now)"], images,
                                                batch_size=128)  # fmt: skip
    print(f"  profiled epoch {profiled:.2f} s: matmuls {matmuls:.2f} s ({matmuls / profiled:.0%}), "
          f"the rest (slices, concatenations, elementwise, Adam) {profiled - matmuls:.2f} s")
    torch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_profile_torch.py")
    out = subprocess.run([torch_python, torch], capture_output=True, text=True, check=True).stdout
    print(out.strip())
    torch_step = float(out.split("128): ")[1].split(" ms")[0]) / 1e3
    for label, epoch in epochs.items():
        print(f"{label:<24} epoch / (PyTorch step x {steps}) = {epoch / (torch_step * steps):.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "python")
