"""Development of new score candidates on normal data only: held-out normals against their
synthetic corruptions (no test image or label is read). Seed 0, split seed 0, 30 epochs.

  python scripts/dev_synthetic_scores.py experiments/results/dev_synthetic_scores/dev_scores.json
  # ~15 min on 2 cores
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "tests")
from helpers import fashion_mnist_dir  # noqa: E402

from jax_vae import data, keys, metrics, registry, scoring, train  # noqa: E402


def shifted(x, dy, dx, shape=(28, 28)):
    img = x.reshape(shape)
    return jnp.roll(img, (dy, dx), axis=(0, 1)).reshape(-1)  # wrap-around: borders are ~0

def scores_for(model, params, images, bank, val_stats=None):
    recon = model.reconstruct()
    err1 = scoring.make_residual_error(1.0, (28, 28, 1))
    enc = model.spec.encode(model.module)
    def per(x):
        xh = recon(params, x)
        base = err1(x, xh)
        shifts = jnp.stack([err1(shifted(x, dy, dx), recon(params, shifted(x, dy, dx)))
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        # RaPP-like: hidden activations of the encoder's first layer for x and x_hat.
        trunk = "encoder" if "encoder" in params["params"] else "trunk"
        first = params["params"][trunk]["dense_0"]
        def h(v):
            return jax.nn.relu(v @ first["kernel"] + first["bias"])

        rapp = jnp.mean(jnp.square(x - xh)) + jnp.mean(jnp.square(h(x) - h(xh)))
        z = enc(params, x)
        d = jnp.sort(jnp.sum(jnp.square(bank - z), axis=1))[:5].mean()
        return jnp.stack([base, shifts.min(), shifts.mean(), rapp, d])
    out = jax.jit(jax.vmap(per))(jnp.asarray(images))
    return np.asarray(out)

def run(dataset_name, ds, cls, name, beta):
    split = data.one_class_split(ds, normal_class=cls)
    model = registry.build(name)
    hp = {"beta": beta} if name == "vae" else {}
    k = keys.member_keys(0, name, 1).train[0]
    r = train.train(k, split.train_images, hp, model=model, epochs=30, hooks=())
    enc = model.spec.encode(model.module)
    bank = jax.jit(jax.vmap(lambda x: enc(r.params, x)))(jnp.asarray(split.train_images))
    syn = data.synthetic_anomalies(split.val_images, seed=0)
    v = scores_for(model, r.params, split.val_images, bank)
    s = scores_for(model, r.params, syn, bank)
    mu, sd = v.mean(0), v.std(0) + 1e-12
    zv, zs = (v - mu) / sd, (s - mu) / sd
    out = {}
    names = ["s1", "shift_min", "shift_mean", "rapp", "knn5"]
    for i, n in enumerate(names):
        out[n] = metrics.separation_auroc(v[:, i], s[:, i])
    out["s1+knn5"] = metrics.separation_auroc(zv[:, 0] + zv[:, 4], zs[:, 0] + zs[:, 4])
    out["shiftmin+knn5"] = metrics.separation_auroc(zv[:, 1] + zv[:, 4], zs[:, 1] + zs[:, 4])
    return out

res = {}
for dataset_name in ("mnist", "fashion_mnist"):
    ds = data.load_dataset("bundled") if dataset_name == "mnist" else data.load_dataset(
        "idx", dataset="fashion_mnist", data_dir=fashion_mnist_dir())
    for name, beta in (("ae", None), ("vae", 1.0)):
        rows = []
        for cls in range(10):
            t = time.time()
            rows.append(run(dataset_name, ds, cls, name, beta))
            print(dataset_name, name, cls, {k: round(v, 4) for k, v in rows[-1].items()},
                  f"{time.time()-t:.0f}s", flush=True)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        res[f"{dataset_name}/{name}"] = {"classes": rows, "mean": mean}
        print("MEAN", dataset_name, name, {k: round(v, 4) for k, v in mean.items()}, flush=True)
with open(sys.argv[1] if len(sys.argv) > 1 else "dev_scores.json", "w") as f:
    json.dump(res, f, indent=1)
