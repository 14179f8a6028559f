"""The key schedule (jax_vae.keys) and the library as a researcher meets it."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT

from jax_vae import keys, registry, train


def _data(key: jax.Array) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_every_key_of_an_ensemble_is_used_once():
    # Everything K members draw over a few epochs: init, shuffles, steps, examples, scores.
    members, epochs, steps, batch = 4, 3, 3, 5
    schedule = keys.member_keys(7, "vae", members)
    used = []
    for train_key, score_key in zip(schedule.train, schedule.score, strict=True):
        init, epoch = keys.init_keys(train_key)
        used += [train_key, score_key, init, *jax.random.split(init), epoch]  # params, sample
        for _ in range(epochs):
            epoch, shuffle, step = keys.epoch_keys(epoch)
            step_keys = jax.random.split(step, steps)
            used += [epoch, shuffle, step, *step_keys, *jax.random.split(step_keys[0], batch)]
        for part in keys.score_keys(score_key):
            used += [part, *keys.image_keys(part, jnp.arange(3))]
    data = [_data(k) for k in used]
    assert len(set(data)) == len(data), "a key is used twice"
    # The driver follows exactly this schedule: its last epoch key is the one chained above.
    x = jax.random.uniform(jax.random.key(0), (10, 784))
    m = registry.build("vae", hidden_dims=(8,), latent_dim=2)
    result = train.train(schedule.train[-1], x, model=m, epochs=epochs, batch_size=5, hooks=())
    assert _data(result.state.key) == _data(epoch)


def test_member_zero_is_the_single_model_and_members_are_independent():
    single = keys.model_keys(3, "ae")
    ensemble = keys.member_keys(3, "ae", 3)
    assert _data(ensemble.train[0]) == _data(single.train)
    assert _data(ensemble.score[0]) == _data(single.score)
    # The old schedule's bug: member 0's training key split into member 1's root.
    children = {_data(k) for k in jax.random.split(ensemble.train[0])}
    assert not children & {_data(k) for k in (*ensemble.train[1:], *ensemble.score[1:])}
    # The documented tree: model node = fold_in(key(seed), the model's key id; ae 0, vae 1).
    for name, index in (("ae", 0), ("vae", 1)):
        node = jax.random.fold_in(jax.random.key(3), index)
        train_key = keys.model_keys(3, name).train
        assert _data(train_key) == _data(jax.random.fold_in(node, keys.TRAIN))


def test_numpy_images_and_legacy_keys_are_accepted(split0):
    m = registry.build("ae", hidden_dims=(8,), latent_dim=2)
    images = split0.train_images[:200]  # NumPy, as one_class_split returns them.
    trainer = train.make_train(m, epochs=1, batch_size=50)
    _, typed = trainer(jax.random.key(0), images)
    _, legacy = trainer(jax.random.PRNGKey(0), images)
    np.testing.assert_array_equal(typed["total"], legacy["total"])
    with pytest.raises(ValueError, match="key must be a jax.random.key"):
        trainer(jnp.zeros(3), images)


def test_the_package_exports_its_modules_and_imports_lightly():
    # Importing jax_vae leaves scikit-learn and Orbax unimported until a module needs them;
    # its modules are attributes. (The documented progress switch: tests/test_docs.py.) The
    # plots import scikit-learn for the ROC curve only: the score command's maps do without.
    code = ("import sys, jax_vae\n"
            "assert 'sklearn' not in sys.modules and 'orbax' not in sys.modules\n"
            "assert callable(jax_vae.train.make_train) and 'ae' in jax_vae.registry.names()\n"
            "import experiments.plots\n"
            "assert 'sklearn' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
