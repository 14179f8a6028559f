"""Classical one-class baselines from scikit-learn, scored like the models (higher = anomalous).

Each baseline is fitted on the normal training images of a one-class split and
returns a function that scores any images, so thresholds and metrics follow the
same path as the AE and the VAE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

from jax_vae import rules
from jax_vae.vocab import BASELINES

Scorer = Callable[[np.ndarray], np.ndarray]


def fit_baseline(
    name: str,
    train_images: np.ndarray,
    *,
    seed: int = 0,
    pca_components: int = 20,
    knn_k: int = 5,
    ocsvm_nu: float = 0.1,
) -> Scorer:
    """Fits a baseline on normal images and returns its scoring function.

    Args:
      name: ``pca`` (reconstruction MSE from ``pca_components`` principal
        components, the linear analogue of the AE), ``knn`` (mean Euclidean
        distance to the ``knn_k`` nearest training images), ``ocsvm`` (RBF
        one-class SVM, gamma "scale", ``ocsvm_nu``; score = minus the decision
        function) or ``iforest`` (IsolationForest, 100 trees; score = minus
        ``score_samples``).
      train_images: Normal training images [N, 784].
      seed: Seed of the randomized methods (PCA's solver, IsolationForest).
      pca_components: Components kept by PCA.
      knn_k: Neighbours averaged by kNN.
      ocsvm_nu: The OC-SVM's bound on the training outlier fraction.

    Returns:
      ``scorer(images [M, 784]) -> scores [M]`` (float32).
    """
    rules.choice("name", name, BASELINES)
    x = np.asarray(train_images, dtype=np.float32)
    if name == "pca":
        pca = PCA(n_components=pca_components, random_state=seed).fit(x)

        def pca_score(images):
            images = np.asarray(images, dtype=np.float32)
            recon = pca.inverse_transform(pca.transform(images))
            return np.mean((images - recon) ** 2, axis=1)

        return _as_float32(pca_score)
    if name == "knn":
        index = NearestNeighbors(n_neighbors=knn_k).fit(x)
        return _as_float32(
            lambda images: index.kneighbors(np.asarray(images, np.float32))[0].mean(axis=1)
        )
    if name == "ocsvm":
        svm = OneClassSVM(kernel="rbf", gamma="scale", nu=ocsvm_nu).fit(x)
        return _as_float32(lambda images: -svm.decision_function(np.asarray(images, np.float32)))
    forest = IsolationForest(n_estimators=100, random_state=seed).fit(x)  # "iforest".
    return _as_float32(lambda images: -forest.score_samples(np.asarray(images, np.float32)))


def _as_float32(fn: Scorer) -> Scorer:
    return lambda images: np.asarray(fn(images), dtype=np.float32)
