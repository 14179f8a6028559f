"""Development of a convolutional transform classifier (GEOM's own family) on the training
split only: no test image or label is read.

  python scripts/dev_geom_conv.py experiments/results/dev_geom_conv/dev_geom_conv.json
  # ~8 min on 2 cores

For each class c of a few (the weakest under the headline's residual: MNIST 8, 2, 3;
Fashion-MNIST T-shirt/top, Pullover, Shirt), seed 0, split seed 0: the beta-VAE (beta 1, 60
epochs) and two transform classifiers trained on c's training normals (less the held-out
share): the library's (``jax_vae.transforms``: an MLP of 400 units, 60 epochs) and a conv
classifier (``models.ConvEncoder`` with 16 and 32 channels, a dense layer of 256 units, 20
epochs; the same 72 transforms, loss and trainer). A validation task: c's held-out training
images against 900 training images of the other classes. Its AUROCs: the VAE's residual
(smoothing 1), each classifier's score, and each z-fused with the residual (z by the held-out
normals' mean and deviation). Also the time to score one image (72 transforms) with the conv
classifier at (16, 32) and at the conv models' default (32, 64) channels.
"""

import dataclasses
import json
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, "tests")
from helpers import fashion_mnist_dir  # noqa: E402

from jax_vae import data, models, registry, scoring, train, transforms  # noqa: E402
from jax_vae.train import core  # noqa: E402

SHAPE = (28, 28, 1)
CLASSES = {"mnist": (8, 2, 3), "fashion_mnist": (0, 2, 6)}
ANOMALIES = 900
CHUNK = 64  # Images scored at once: 72 transforms each.


class ConvClassifier(nn.Module):
    """Image -> strided 4x4 convs (ReLU) -> dense 256 (ReLU) -> one logit per transform."""

    transforms: int
    channels: tuple = (16, 32)

    @nn.compact
    def __call__(self, x):
        h = models.ConvEncoder(self.channels, SHAPE)(x)
        return nn.Dense(self.transforms)(nn.relu(nn.Dense(256)(h)))


@dataclasses.dataclass(frozen=True)
class ConvTask(transforms.Task):
    """transforms.Task with the conv classifier."""

    channels: tuple = (16, 32)

    @property
    def module(self):
        return ConvClassifier(transforms.count(self.image_shape), self.channels)


def conv_score(task):
    """One image's score under the conv classifier: ``transforms.score`` with its module."""
    n = transforms.count(SHAPE)

    def score(params, x, key=None):
        images = jax.vmap(transforms.transform, in_axes=(None, 0))(x.reshape(SHAPE), jnp.arange(n))
        logits = task.module.apply(params, images.reshape(n, -1))
        return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))

    return score


def scored(fn, params, x):
    return np.asarray(scoring.map_chunked(fn, params, x, chunk_size=CHUNK))


def per_image_ms(channels):
    task = ConvTask(SHAPE, channels)
    params = task.init(jax.random.key(0), jnp.zeros((784,)))
    fn, x = conv_score(task), np.random.default_rng(0).random((CHUNK, 784), np.float32)
    scored(fn, params, x)
    t = time.perf_counter()
    for _ in range(5):
        scored(fn, params, x)
    return (time.perf_counter() - t) / 5 / CHUNK * 1e3


def run(name, ds, c, rng):
    split = data.one_class_split(ds, normal_class=c)
    train_x = ds.train_images.reshape(len(ds.train_images), -1).astype(np.float32) / 255.0
    other = rng.choice(np.flatnonzero(ds.train_labels != c), ANOMALIES, replace=False)
    x = np.concatenate([split.val_images, train_x[other]])
    y = np.r_[np.zeros(len(split.val_images)), np.ones(ANOMALIES)]
    held = len(split.val_images)

    vae = registry.build("vae")
    r = train.train(
        jax.random.key(100 + c), split.train_images, {"beta": 1.0}, model=vae, epochs=60, hooks=()
    )
    error, reconstruct = scoring.make_residual_error(1.0, SHAPE), vae.reconstruct()
    out = {"residual": scored(lambda p, v, key: error(v, reconstruct(p, v)), r.params, x)}
    t = time.perf_counter()
    fitted = transforms.fit(jax.random.key(c), jnp.asarray(split.train_images), SHAPE)
    out["mlp"] = scored(lambda p, v, key: transforms.score(p, v, SHAPE), fitted, x)
    seconds = {"mlp": time.perf_counter() - t}
    t, task = time.perf_counter(), ConvTask(SHAPE)
    state, _ = core.make_train(task, tx=core.ADAM, epochs=20, batch_size=128)(
        jax.random.key(c), jnp.asarray(split.train_images), {}
    )
    out["conv"] = scored(conv_score(task), state.params, x)
    seconds["conv"] = time.perf_counter() - t

    def z(s):
        return (s - s[:held].mean()) / s[:held].std()

    aurocs = {k: roc_auc_score(y, v) for k, v in out.items()}
    aurocs.update(
        {f"residual+{k}": roc_auc_score(y, z(out["residual"]) + z(out[k])) for k in ("mlp", "conv")}
    )
    row = {"dataset": name, "class": c, "auroc": aurocs, "fit_and_score_seconds": seconds}
    print(json.dumps(row), flush=True)
    return row


def main(path):
    rows, rng = [], np.random.default_rng(0)
    for name, classes in CLASSES.items():
        ds = (
            data.load_dataset("bundled")
            if name == "mnist"
            else data.load_dataset("idx", dataset=name, data_dir=fashion_mnist_dir())
        )
        rows += [run(name, ds, c, rng) for c in classes]
    timing = {f"{a},{b}": per_image_ms((a, b)) for a, b in ((16, 32), (32, 64))}
    with open(path, "w") as f:
        json.dump({"rows": rows, "conv_score_ms_per_image": timing}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dev_geom_conv.json")
