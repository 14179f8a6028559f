"""The seed specification's defaults, defined once: every module and command takes them from
here (the models' sizes, the optimizer, the training schedule, the threshold)."""

from __future__ import annotations

HIDDEN_DIMS = (400,)  # Encoder 784 -> 400 (ReLU) -> latent; the decoder mirrors it.
LATENT_DIM = 20
LEARNING_RATE = 1e-3  # Adam.
BATCH_SIZE = 128
EPOCHS = 30
VAL_FRACTION = 0.1  # Normal training images held out to set the threshold.
THRESHOLD_PERCENTILE = 95.0  # Of the held-out normals' scores.
