"""The conv AE of benchmarks/conv_profile.py in PyTorch (2 threads): one training step,
then one epoch."""

import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(3136, 20),
        )  # fmt: skip
        self.dense = nn.Sequential(nn.Linear(20, 3136), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1)
        )

    def forward(self, x):
        return torch.sigmoid(self.decoder(self.dense(self.encoder(x)).view(-1, 64, 7, 7)))


model = AutoEncoder()
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
images = torch.rand(5331, 1, 28, 28)


def step(batch):
    optimizer.zero_grad()
    loss = ((model(batch) - batch) ** 2).sum(dim=(1, 2, 3)).mean()
    loss.backward()
    optimizer.step()


for _ in range(3):
    step(images[:128])
times = []
for _ in range(20):
    t = time.perf_counter()
    step(images[:128])
    times.append(time.perf_counter() - t)
print(f"torch step (batch 128): {np.median(times) * 1e3:.1f} ms")
t = time.perf_counter()
order = torch.randperm(images.shape[0])
for start in range(0, images.shape[0], 128):
    step(images[order[start : start + 128]])
print(f"torch epoch (42 steps): {time.perf_counter() - t:.2f} s")
