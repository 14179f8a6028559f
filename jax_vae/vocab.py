"""The vocabularies: the names a setting may take (datasets, sources, architectures, scores
of the VAE, likelihoods, layouts, baselines) and the classes' names, labels and folder names.
Plain data, no JAX: the rules (:mod:`jax_vae.rules`) check values against it."""

from __future__ import annotations

ARCHITECTURES = ("mlp", "conv")
VAE_SCORES = ("mean", "mc", "elbo", "iwae")
LIKELIHOODS = ("gaussian", "bernoulli")
SOURCES = ("auto", "bundled", "tfds", "idx")
DATASETS = ("mnist", "fashion_mnist", "kmnist")
# A user's own images (jax_vae.data.load_folder, load_arrays): one normal class, index 0.
LOCAL_DATASETS = ("folder", "arrays")
CLASS_NAMES = {
    **{name: ("normal",) for name in LOCAL_DATASETS},
    "mnist": tuple("0123456789"),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
        "Bag", "Ankle boot",
    ),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}  # fmt: skip
LAYOUTS = ("data", "models")
BASELINES = ("pca", "knn", "ocsvm", "iforest")
NUM_CLASSES = 10


def class_label(dataset: str, index: int) -> str:
    """How tables, plots and logs name a class: ``digit 3``, ``Sandal``, ``normal``."""
    return f"digit {index}" if dataset == "mnist" else CLASS_NAMES[dataset][index]


def class_slug(dataset: str, index: int) -> str:
    """A class in folder names: ``digit3``, ``fashion_mnist-sandal``, ``...-t-shirt-top``,
    ``folder`` (a user's own images have one normal class)."""
    if dataset == "mnist":
        return f"digit{index}"
    if dataset in LOCAL_DATASETS:
        return dataset
    words = "".join(c if c.isalnum() else " " for c in CLASS_NAMES[dataset][index].lower())
    return f"{dataset}-{'-'.join(words.split())}"
