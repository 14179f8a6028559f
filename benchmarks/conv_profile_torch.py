"""The conv AE of the benchmarks (--architecture=conv --hidden_dims=32,64, latent 20) in
PyTorch, 2 threads, Adam 1e-3, batch 128: one training step, then epochs over random images.

  python benchmarks/conv_profile_torch.py                       # 28x28x1, 5,331 images
  python benchmarks/conv_profile_torch.py --size=128 --channels=3 --images=270 --epochs=3

Prints the median step, then one JSON line: seconds per epoch (the median after the first),
images/s.
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)


class AutoEncoder(nn.Module):
    def __init__(self, size: int, channels: int):
        super().__init__()
        side = size // 4
        self.shape = (64, side, side)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * side * side, 20),
        )  # fmt: skip
        self.dense = nn.Sequential(nn.Linear(20, 64 * side * side), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )  # fmt: skip

    def forward(self, x):
        h = self.dense(self.encoder(x)).view(-1, *self.shape)
        return torch.sigmoid(self.decoder(h))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--images", type=int, default=5331)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    model = AutoEncoder(args.size, args.channels)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.rand(args.images, args.channels, args.size, args.size)
    batch = min(128, args.images)

    def step(x):
        optimizer.zero_grad()
        loss = ((model(x) - x) ** 2).sum(dim=(1, 2, 3)).mean()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step(images[:batch])
    times = []
    for _ in range(20):
        t = time.perf_counter()
        step(images[:batch])
        times.append(time.perf_counter() - t)
    print(f"torch step (batch {batch}): {np.median(times) * 1e3:.1f} ms")
    epochs = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        order = torch.randperm(images.shape[0])
        for start in range(0, images.shape[0], batch):
            step(images[order[start : start + batch]])
        epochs.append(time.perf_counter() - t)
    seconds = float(np.median(epochs[1:] or epochs))
    print(json.dumps({"seconds_per_epoch": seconds, "images_per_second": args.images / seconds,
                      "step_ms": float(np.median(times) * 1e3)}))


if __name__ == "__main__":
    main()
