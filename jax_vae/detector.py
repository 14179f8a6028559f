"""A detector in the habits of scikit-learn and PyOD: ``fit`` on normal images, then
``score`` and ``predict`` new ones; ``save``/``load`` through the same Orbax checkpoints and
``config.json`` that the commands write, so a command-line run loads as a detector.

Composed from the library (no second pipeline): :func:`jax_vae.train.train`, the model's
registry score, :func:`jax_vae.metrics.threshold_from_normals`::

    detector = Detector("vae", epochs=30).fit(jax.random.key(0), normal_images)
    flags = detector.predict(new_images)        # 1: anomalous (score above the threshold)
    detector.save("my_detector")                # Detector.load("my_detector") or a run folder
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_vae import (
    data,
    health,
    keys,
    metrics,
    plugins,
    registry,
    rules,
    runs,
    scores,
    scoring,
    spec,
    train,
    vocab,
)
from jax_vae.checkpoints import Checkpointer, CheckpointError

HOLD_OUT = 3  # The key of the held-out normals (0 training, 1 scoring: jax_vae.keys).
SETTINGS = ("hidden_dims", "latent_dim", "architecture", "likelihood", "epochs", "batch_size",
            "learning_rate", "val_fraction", "threshold_percentile", "vae_score", "mc_samples",
            "score_smoothing", "score", "score_alternatives", "image_shape",
            "threshold_folds")  # fmt: skip


class Detector:
    """One model trained on normal images; its threshold the percentile of held-out scores.

    Args:
      model: A registered model name (``ae``, ``vae``, yours); by default the AE, which
        cannot collapse as a VAE can on small or simple data (docs/usage.md#troubleshooting).
      hparams: The hyperparameters its loss reads (e.g. ``{"beta": 1.0}``); defaults fill in.
      **settings: Any of ``SETTINGS``, with the commands' defaults and meaning
        (``hidden_dims``, ``epochs``, ``threshold_percentile``, ``score_smoothing`` ...).
        ``score_alternatives``: scores ``fit`` may take instead of ``score`` on images larger
        than 28x28, by their synthetic AUROC (:func:`jax_vae.health.choose_score`); none by
        default (the anomaly map's, so chosen, did worse than the residual on 3 of 7 tasks:
        docs/benchmarks.md).
    """

    def __init__(self, model: str = "ae", *, hparams: dict | None = None, **settings: Any):
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise TypeError(f"Detector got unknown settings {sorted(unknown)}; use {SETTINGS}")
        defaults = {"hidden_dims": spec.HIDDEN_DIMS, "latent_dim": spec.LATENT_DIM,
                    "architecture": "mlp", "likelihood": "gaussian", "epochs": spec.EPOCHS,
                    "batch_size": spec.BATCH_SIZE, "learning_rate": spec.LEARNING_RATE,
                    "val_fraction": spec.VAL_FRACTION,
                    "threshold_percentile": spec.THRESHOLD_PERCENTILE,
                    "vae_score": "mean", "mc_samples": 10, "score_smoothing": 0.0,
                    "score": "residual", "score_alternatives": (),
                    "threshold_folds": 0}  # fmt: skip
        self.settings = {**defaults, "image_shape": None, **settings}
        self.settings["score_alternatives"] = tuple(self.settings["score_alternatives"])
        rules.percentile("threshold_percentile", self.settings["threshold_percentile"])
        self.name, self._hparams = model, hparams or {}
        self._score = self.settings["score"]  # As configured: each fit chooses from it anew.
        self._build(self.settings["image_shape"] or (28, 28, 1))  # Checks the settings now.
        self.params: Any = None
        self.threshold: float | None = None
        self.history: dict[str, np.ndarray] | None = None
        self.health: list[str] = []  # Training-health warnings (jax_vae.health), one line each.
        self.held_out: int | None = None  # Held-out normals that set the threshold ...
        self.fpr_interval: tuple[float, float] | None = None  # ... and the share it flags.
        # The score's choice from its alternatives: {"score", "why", "synthetic_auroc"}.
        self.score_choice: dict[str, Any] | None = None
        self._state: Any = None
        self._fitted: dict[str, Any] = {}  # What the score fit: banks, fusion statistics.
        self._stats: dict[str, Any] = {}
        self._score_key = jax.random.key(0)

    def _build(self, image_shape: tuple) -> None:
        """The model for images of ``image_shape``, its score and hyperparameters."""
        self.model = registry.build(
            self.name, image_shape=tuple(image_shape),
            **{k: self.settings[k] for k in ("hidden_dims", "latent_dim", "architecture",
                                              "likelihood")})  # fmt: skip
        self.hparams = {**self.model.hparams, **self._hparams}
        scores.check_reconstruction("score", self.settings["score"], self.settings["vae_score"])
        if self.settings["score_alternatives"]:
            rules.choices("score_alternatives", self.settings["score_alternatives"],
                          scores.names())  # fmt: skip
        for name in self.settings["score_alternatives"]:
            scores.check_reconstruction("score_alternatives", name, self.settings["vae_score"])
        self.scorer = scores.scorer(
            self.model, [(self.settings["score"], self.settings["score_smoothing"])],
            vae_score=self.settings["vae_score"], mc_samples=self.settings["mc_samples"],
            likelihood=self.settings["likelihood"])  # fmt: skip

    def fit(self, key: jax.Array, normal_images: Any) -> Detector:
        """Trains on normal images, holding out ``val_fraction`` of them for the threshold.

        Args:
          key: A PRNG key: training, scoring and the hold-out each get their branch.
          normal_images: uint8 (0-255) or float (0-1) images, [N, pixels] or [N, H, W(, C)].
        """
        if np.shape(normal_images)[:1] in ((), (0,), (1,)):
            raise rules.InvalidArgument(
                f"normal_images must hold at least 2 images (one to train on, one held out "
                f"for the threshold), got shape {list(np.shape(normal_images))}"
            )
        image_shape = data.image_shape_of(normal_images, self.settings["image_shape"])
        self.settings["image_shape"] = image_shape
        self.settings["score"], self.score_choice = self._score, None
        self._build(image_shape)  # Any size and channel count: the model takes this one.
        images = data.as_images(normal_images, name="normal_images")
        n, folds = images.shape[0], self.settings["threshold_folds"]
        percentile = self.settings["threshold_percentile"]
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, HOLD_OUT), n))
        train_key = jax.random.fold_in(key, keys.TRAIN)
        self._score_key = jax.random.fold_in(key, keys.SCORE)
        if folds:  # Every normal image scored by a model that did not train on it.
            if not 2 <= folds <= n:
                raise rules.InvalidArgument(
                    f"threshold_folds must be 0 (a held-out share) or 2 to the {n} images, "
                    f"got {folds}")  # fmt: skip
            fit, held = images, n
            val_components = self._cross_fit(train_key, images, np.array_split(order, folds))
        else:
            held = rules.held_out("val_fraction", self.settings["val_fraction"], n,
                                  "the images")  # fmt: skip
            val, fit = images[np.sort(order[:held])], images[np.sort(order[held:])]
        warning = metrics.threshold_warning(held, percentile=percentile)
        if warning:
            logging.warning("%s", warning)
        result = self._train(train_key, fit)
        self.params, self.history, self._state = result.params, result.history, result.state
        findings = health.check(result.history, baseline=health.baseline_loss(
            fit, likelihood=self.settings["likelihood"]))  # fmt: skip
        self.health = [f.message(self.name) for f in findings]
        for line in self.health:
            logging.warning("%s", line)
        candidates = health.score_candidates(image_shape, self.settings["score"],
                                             self.settings["score_alternatives"])  # fmt: skip
        if len(candidates) > 1 and not folds:  # (Cross-fitted: no held-out normals to judge.)
            self.score_choice = self._choose(candidates, fit, val)
            self.settings["score"] = self.score_choice["score"]
            self._build(image_shape)
        # The score fits the training images (a k-NN bank) and, a fusion, the held-out ones.
        self._fitted = self.scorer.fit(self.params, fit, key=self._score_key)
        if not folds:
            val_components = self._components(val)
        self._stats = self.scorer.standardize(val_components)
        val_scores = self.scorer.combine(val_components, self._stats)[..., 0]
        self.threshold = metrics.threshold_from_normals(val_scores, percentile=percentile)
        self.held_out = held
        self.fpr_interval = metrics.fpr_interval(held, percentile=percentile)
        return self

    def _choose(self, candidates: tuple[str, ...], fit: np.ndarray,
                val: np.ndarray) -> dict[str, Any]:  # fmt: skip
        """Of the ``candidates`` scores, the one that separates the held-out normals ``val``
        from their synthetic corruptions best (:func:`jax_vae.health.choose_score`; the
        commands' run chooses the same way)."""
        scorer = scores.scorer(
            self.model, [(c, self.settings["score_smoothing"]) for c in candidates],
            vae_score=self.settings["vae_score"], mc_samples=self.settings["mc_samples"],
            likelihood=self.settings["likelihood"])  # fmt: skip
        fitted = scorer.fit(self.params, fit, key=self._score_key)
        synthetic = data.synthetic_anomalies(val, image_shape=self.settings["image_shape"])
        val_parts, synthetic_parts = (
            scoring.map_chunked(scorer.fn, scorer.inputs(self.params, fitted), x,
                                key=self._score_key) for x in (val, synthetic))  # fmt: skip
        stats = scorer.standardize(val_parts)
        choice = health.score_choice(candidates, *(scorer.combine(p, stats) for p in
                                                   (val_parts, synthetic_parts)))  # fmt: skip
        logging.info("%s: scored by %s: %s", self.name, choice["score"], choice["why"])
        return choice

    def _batch_size(self, n: int) -> int:
        return min(self.settings["batch_size"], n)

    def _train(self, key: jax.Array, images: np.ndarray, pad_to: int | None = None,
               steps: int | None = None):  # fmt: skip
        """Trains on ``images`` for the set epochs or, given, about ``steps`` steps."""
        n = images.shape[0]
        batch_size, epochs = self._batch_size(n), self.settings["epochs"]
        if steps is not None:
            epochs = max(1, round(steps / train.num_batches(n, batch_size)))
        if batch_size < self.settings["batch_size"] and pad_to is None:
            logging.info("batch size %d: the training set has %d images", batch_size, n)
        return train.train(
            key, images, self.hparams, model=self.model, batch_size=batch_size,
            tx=train.adam(self.settings["learning_rate"]), epochs=epochs, hooks=(),
            pad_to=pad_to,
        )  # fmt: skip

    def _cross_fit(self, key: jax.Array, images: np.ndarray, folds: list) -> np.ndarray:
        """The plain score components of every image from the model trained without its fold
        (each fold's model from its own branch of ``key``, the folds' trainings padded to
        one size: one compiled program), in the order of the folds. A fold's model takes as
        many optimizer steps as the detector's own model on all the images: with fewer
        (the same epochs of fewer batches) it would be less trained, score its fold higher,
        and set the threshold too high."""
        rest = [np.sort(np.concatenate(folds[:j] + folds[j + 1:])) for j in range(len(folds))]
        pad_to, n = max(len(r) for r in rest), len(images)
        steps = self.settings["epochs"] * train.num_batches(n, self._batch_size(n))
        components = []
        for j, (fold, others) in enumerate(zip(folds, rest, strict=True)):
            logging.info("threshold fold %d/%d: training on %d images", j + 1, len(folds),
                         len(others))  # fmt: skip
            params = self._train(jax.random.fold_in(key, j + 1), images[others], pad_to,
                                 steps).params  # fmt: skip
            fitted = self.scorer.fit(params, images[others],
                                     key=jax.random.fold_in(key, j + 1))  # The fold's branch.
            components.append(scoring.map_chunked(
                self.scorer.fn, self.scorer.inputs(params, fitted), images[np.sort(fold)],
                key=self._score_key))  # fmt: skip
        return np.concatenate(components)

    def score(self, images: Any) -> np.ndarray:
        """Anomaly scores [N] (higher: more anomalous); image i's key depends on i alone."""
        if self.params is None:
            raise ValueError("the detector is not fitted: call fit(key, normal_images) or load")
        expected, dims = tuple(self.model.module.image_shape), tuple(np.shape(images))
        if not (dims[1:] == expected or (dims[1:] == expected[:2] and expected[2] == 1)
                or dims[1:] == (math.prod(expected),)):  # fmt: skip
            raise rules.InvalidArgument(
                f"images of shape {list(dims)} do not fit the detector's "
                f"{'x'.join(map(str, expected))} (height x width x channels) images"
            )
        return self.scorer.combine(self._components(images), self._stats)[..., 0]

    def _components(self, images: Any) -> np.ndarray:
        """The plain scores the score is made of, [N, components]."""
        return scoring.map_chunked(self.scorer.fn, self.scorer.inputs(self.params, self._fitted),
                                   images, key=self._score_key)  # fmt: skip

    decision_function = score  # PyOD's name.

    def predict(self, images: Any) -> np.ndarray:
        """1 where the score is above the fitted threshold (anomalous), else 0."""
        return (self.score(images) > self.threshold).astype(np.int32)

    def save(self, directory: str) -> None:
        """Writes ``config.json``, the final training state (an Orbax checkpoint) and what the
        score fit into a new folder ``directory`` (:mod:`jax_vae.runs`).

        Raises:
          ValueError: The detector is not fitted.
          FileExistsError: ``directory`` exists (what is there is left as it is).
        """
        if self._state is None:
            raise ValueError("only a fitted detector can be saved")
        if os.path.lexists(directory):
            raise FileExistsError(f"{directory} exists; save the detector into a new folder")
        os.makedirs(directory)
        record = {**{k: v for k, v in self.settings.items()}, "models": [self.model.name],
                  "detector": {"model": self.model.name, "threshold": self.threshold,
                               "held_out": self.held_out, "health": self.health,
                               "score_choice": self.score_choice,
                               "hparams": {k: float(v) for k, v in self.hparams.items()},
                               "score_key": np.asarray(jax.random.key_data(
                                   self._score_key)).tolist()}}  # fmt: skip
        runs.write_config(directory, record)
        history = [{k: v[i] for k, v in self.history.items()}
                   for i in range(self.settings["epochs"])]  # fmt: skip
        checkpointer = Checkpointer(runs.checkpoint_dir(directory, self.model.name),
                                    asynchronous=False)  # fmt: skip
        checkpointer.save(self.settings["epochs"], self._state, history)
        checkpointer.close()
        runs.write_fitted_scores(directory, self.model.name, self._fitted, self._stats)

    @classmethod
    def load(cls, directory: str, *, model: str | None = None) -> Detector:
        """A saved detector, or a finished ``experiments.main`` run (its ``model``, by
        default the first it trained) with the run's threshold and score, whichever it is.

        Raises:
          CheckpointError: Not a detector or a finished run, or no final checkpoint.
          PluginError: A file the run imported (``--import``) is missing or has changed.
        """
        config = runs.read_config(directory)
        saved = config.get("detector")
        # The code the run imported (--import: models registered in a user's file), as it was.
        plugins.load_recorded(config.get("imports", ()), what=directory)
        if runs.kind_of(config) == "grid":
            raise CheckpointError(f"{directory} holds a sweep or baselines run; give a single "
                                  "run or a saved detector")  # fmt: skip
        names = [m for m in config.get("models", ()) if m not in vocab.BASELINES]
        try:
            completion = {} if saved else runs.read_completion(directory)
        except runs.RunFolderError:  # Not finished: said below, once the model is known.
            completion = {}
        recommended = completion.get("recommended", {}).get("model")  # A run's (report).
        name = model or (saved["model"] if saved else recommended or (names or [None])[0])
        if name not in names:
            raise CheckpointError(f"{directory} has no model {name!r} (it has {names})")
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
                    if k in SETTINGS}  # fmt: skip
        if saved:
            slug, threshold, hparams = name, saved["threshold"], saved["hparams"]
            found = saved
        else:  # A run folder: the threshold in metrics.json.
            try:
                found = completion["models"][name]
                threshold = found["threshold"]
            except KeyError:
                raise CheckpointError(f"{directory}: not a finished run (no metrics.json with "
                                      f"{name}'s threshold)") from None  # fmt: skip
            slug = runs.model_slug(config["dataset"], config["normal_class"], name)
            # A score chosen after training (--score_alternatives) replaces the configured one.
            settings["score"] = found.get("score_choice", {}).get("score", settings["score"])
            hparams = {"beta": config["beta"], "kl_warmup_epochs": config["kl_warmup_epochs"],
                       **config.get("hparams", {})}  # fmt: skip
        detector = cls(name, **settings)  # A run's images: MNIST's 28x28x1 (the default).
        detector.hparams = {k: v for k, v in hparams.items() if k in detector.model.hparams}
        detector._fitted, detector._stats = runs.read_fitted_scores(directory, slug)
        scorer = detector.scorer
        if {*map(scores.label, scorer.fits)} - set(detector._fitted) or \
                {*map(scores.label, scorer.fused)} - set(detector._stats):  # fmt: skip
            raise CheckpointError(f"{directory} scores with --score={settings.get('score')} "
                                  "but holds no fitted scores (a run of an older version); "
                                  "re-run it")  # fmt: skip
        # The restore template: one model's state, shaped as training initializes it.
        example = jnp.zeros(math.prod(detector.model.module.image_shape), jnp.float32)
        tx = train.adam(detector.settings["learning_rate"])
        trainer = train.make_train(detector.model, tx=tx)
        template = train.state_template(trainer.init_from, jax.random.key(0), example,
                                        detector.hparams)  # fmt: skip
        folder = runs.checkpoint_dir(directory, slug)
        checkpointer = Checkpointer(folder)
        if checkpointer.latest_epoch() != detector.settings["epochs"]:
            checkpointer.close()
            raise CheckpointError(f"{folder}: no final checkpoint (epoch "
                                  f"{detector.settings['epochs']})")  # fmt: skip
        state, history = checkpointer.restore(template)
        checkpointer.close()
        detector.params, detector._state, detector.threshold = state.params, state, threshold
        detector.health = list(found.get("health", ()))
        detector.held_out = found.get("held_out")
        detector.score_choice = found.get("score_choice")
        if detector.held_out:
            detector.fpr_interval = metrics.fpr_interval(
                detector.held_out, percentile=detector.settings["threshold_percentile"])
        detector.history = train.stack_history(history)
        if saved:
            detector._score_key = jax.random.wrap_key_data(
                np.asarray(saved["score_key"], np.uint32))
        else:  # The run's key for its test images: sampled scores reproduce too.
            detector._score_key = keys.score_keys(keys.model_keys(config["seed"], name).score).test
        return detector
