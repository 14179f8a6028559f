"""Run and sweep settings and their validation: no JAX, no data, so a bad flag fails fast.

Every rule comes from :mod:`jax_vae.rules`, the same functions the library
calls; here they are called with the flag's name. A single run is a grid of
one (:meth:`SweepConfig.single`), so runs, sweeps and baselines share one
pipeline (:mod:`experiments.pipeline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

from jax_vae import plugins, registry, rules, runs, scores, spec, vocab

# An invalid setting: a rule of jax_vae.rules broken, its message naming the flag. The rules
# raise it themselves (called here with the flag's name), so nothing needs translating.
ConfigError = rules.InvalidArgument


@contextlib.contextmanager
def as_flags(where: str = "") -> Iterator[None]:
    """The one place where the commands translate the library's errors: an argument error
    names the library's parameter, which is the flag of the same name (``batch_size`` ->
    ``--batch_size``); ``where`` says which part of the grid it concerns."""
    try:
        yield
    except rules.InvalidArgument as e:
        message = str(e)
        raise ConfigError(message if message.startswith("--") else f"--{message}{where}") from None


def _flag(default: Any, help_text: str) -> Any:
    """A setting with its flag's help text (``experiments.cli`` defines the flag from it)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


def _unflagged(factory: Callable[[], Any]) -> Any:
    """A setting that ``experiments.cli`` fills from flags of another shape (``--hparams``,
    ``--import``), not from a flag of its own name."""
    return dataclasses.field(default_factory=factory, metadata={"flag": False})


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of one run; field names are the flag names, metadata the flags' help."""

    beta: float = _flag(1.0, "KL weight of the beta-VAE (relative to the summed squared error).")
    normal_class: int = _flag(0, "The normal class: an index 0-9 or a name (Sandal, ...).")
    latent_dim: int = _flag(spec.LATENT_DIM, "Latent size of both models.")
    hidden_dims: tuple[int, ...] = _flag(spec.HIDDEN_DIMS, "Encoder hidden widths; the decoder "
                                         "mirrors them.")
    epochs: int = _flag(spec.EPOCHS, "Training epochs.")
    batch_size: int | None = _flag(None, f"Training batch size; default: {spec.BATCH_SIZE}, or "
                                   "the training images' number where fewer.")
    learning_rate: float = _flag(spec.LEARNING_RATE, "Adam learning rate.")
    seed: int = _flag(0, "Training seed: initialization, shuffling, sampling (not the split).")
    split_seed: int = _flag(0, "Seed of the held-out normals, sampled and synthetic anomalies.")
    val_fraction: float = _flag(spec.VAL_FRACTION, "Share of normal training images held out "
                                "for the threshold.")
    anomaly_fraction: float | None = _flag(None, "Anomaly share of the test set; unset: all.")
    threshold_percentile: float = _flag(spec.THRESHOLD_PERCENTILE, "Percentile of held-out "
                                        "normal scores: threshold.")
    models: tuple[str, ...] = _flag(
        ("ae", "vae"),
        "Models: ae, vae, any registered one (jax_vae.registry), or baselines: "
        f"{', '.join(vocab.BASELINES)}.",
    )
    data_source: str = _flag("auto", f"One of {', '.join(vocab.SOURCES)} (auto: find it).")
    data_dir: str | None = _flag(
        None, "tfds data dir (tfds) or folder of IDX files (idx); with --dataset=folder your "
        "images' folder (train/, test/<kind>/), with --dataset=arrays a .npy/.npz file.")
    dataset: str = _flag(
        "mnist", f"One of {', '.join(vocab.DATASETS)}, or your own images: folder, arrays.")
    channels: int = _flag(0, "--dataset=folder: images as 1 (gray) or 3 (RGB) channels; 0: as "
                          "the files are.")
    image_size: tuple[int, ...] = _flag((), "--dataset=folder: resize images to H,W; empty: "
                                        "the files' common size.")
    output_dir: str | None = _flag(None, "New folder for the results; default: one under runs/.")
    vae_score: str = _flag("mean", f"VAE anomaly score: {', '.join(vocab.VAE_SCORES)}.")
    mc_samples: int = _flag(10, "Draws for --vae_score=mc, elbo or iwae.")
    score_smoothing: float = _flag(0.0, "Gaussian sigma (pixels) blurring the residual; 0: MSE.")
    score: str = _flag("residual", "Anomaly score: a registered one (jax_vae.scores): "
                       f"{', '.join(scores.BUILTIN)}, yours (docs/usage.md).")
    score_alternatives: tuple[str, ...] = _flag(
        (), "Scores each model takes instead of --score on images larger than 28x28 where "
        "their synthetic AUROC is higher by more than .01 (e.g. residual_top,residual_max; "
        "unreliable in docs/benchmarks.md's trials).")
    chunk_size: int = _flag(2048, "Images per compiled scoring call (bounds memory).")
    num_devices: int = _flag(0, "Devices to use (0: all; several: data parallel).")
    checkpoint_every: int = _flag(5, "Epochs between checkpoints (and the last); 0: none.")
    likelihood: str = _flag("gaussian", f"Reconstruction term: {', '.join(vocab.LIKELIHOODS)}.")
    kl_warmup_epochs: int = _flag(0, "Linear KL warm-up epochs (0: none).")
    ensemble_size: int = _flag(1, "Seeds per model, trained together; scores averaged.")
    architecture: str = _flag("mlp", "mlp, or conv (--hidden_dims are then channels).")
    preset: str | None = _flag(None, "Named configuration (best); explicit flags override it.")
    tensorboard: bool = _flag(True, "Write TensorBoard events under <output_dir>/tensorboard.")
    # The models' other hyperparameters (ModelSpec.hparams; --hparams=noise=0.3): a model
    # reads those it declares, the rest keep the entry's defaults.
    hparams: dict[str, float] = _unflagged(dict)
    # What --import loaded: {"import", "path", "sha256"} each (jax_vae.plugins.load).
    imports: tuple[dict[str, str], ...] = _unflagged(tuple)


# The selection protocol (README, "Choosing honestly across datasets"), fixed before any
# Fashion-MNIST test label was seen. Candidates: the AE and the beta-VAE at these betas, each
# trained for these epochs and scored at these residual smoothings (48), every class 0-9,
# seeds 0-2, split seed 0. Rules, computed by experiments.select from the candidates' sweeps:
#   synthetic -- the highest mean synthetic AUROC on the dataset itself (normal data only);
#   transfer  -- the highest mean test AUROC on the other dataset (MNIST <-> Fashion-MNIST).
# The transfer pick (none of the dataset's own test labels chose it) is reported beside the
# within-dataset headline (WITHIN_CANDIDATES below).
CANDIDATES = {
    "models": ("ae", "vae"), "betas": (0.5, 1.0, 2.0), "epochs": (30, 60),
    "smoothings": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
}  # fmt: skip
# The second candidate family, fixed (commit 6f54570) before any of its candidates was
# evaluated on a test set, and designed after both datasets' results for the first family were
# known (docs/benchmarks.md, "Choosing honestly across datasets"). Trained models: the AE and the
# beta-VAE at beta 1, 60 epochs, otherwise the seed spec; every class 0-9, seeds 0-2, split
# seed 0, the full test set. Each model is scored five ways, each a candidate (10):
#   shift              -- the minimum, over the nine one-pixel shifts of the image (dy, dx in
#                         -1, 0, 1; pixels shifted in repeat the edge), of the shifted image's
#                         residual smoothed at sigma 1 (the first family's score at smoothing 1);
#   latent_knn         -- z(smoothing-1 score) + z(mean squared distance of the image's code --
#                         the VAE's posterior mean, the AE's encoder output -- to its 5 nearest
#                         codes of the model's training images);
#   pixel_knn          -- z(smoothing-1 score) + z(the same distance between flattened pixels);
#   shift_latent_knn, shift_pixel_knn -- with the shift score in place of the smoothing-1 one;
# z(.) standardizes a score by its mean and standard deviation over the held-out normals
# (per model). The rules are the first family's, over the pool of both families (58
# candidates): transfer (each dataset's headline), joint (--preset=best on any other
# dataset; development numbers, chosen on both test sets), oracle (an upper bound).
FUSION_CANDIDATES = {
    "models": ("ae", "vae"), "betas": (1.0,), "epochs": (60,), "smoothings": (1.0,),
    "scores": ("shift", "latent_knn", "pixel_knn", "shift_latent_knn", "shift_pixel_knn"),
    "knn": 5, "shifts": 1,
}  # fmt: skip
# Selection within a dataset (the leave-classes-out protocol, docs/benchmarks.md), fixed before
# any candidate new to it (the RaPP scores) met a test set. The validation tasks use the
# training split only: task c' is normal class c''s held-out training images against
# `validation_images` (100) training images of each other class (a sweep's
# --validation_images). For the headline of class c the rule sees no task in which c is
# normal, nor c's images as anomalies: candidate i's validation score for c is the mean, over
# the tasks c' != c and seeds 0-2, of the mean AUROC against the classes other than c and c'.
# The pick is the first candidate of this list (the simplest first) whose validation score
# is within one standard error (over the tasks c') of the best one's. Class c's headline is
# its pick's test AUROC on task c. The candidates: the AE and the beta-VAE at beta 1, 60
# epochs, smoothing 1, scored by the residual, the shift score, shift_latent_knn, and rapp
# (the residual z-fused with RaPP's NAP: the encoder's activations on the image minus on its
# reconstruction, whitened by the training images' principal axes; Kim et al., ICLR 2020).
WITHIN_CANDIDATES = (
    {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "residual"},
    {"model": "vae", "beta": 1.0, "epochs": 60, "smoothing": 1.0, "score": "residual"},
    {"model": "vae", "beta": 1.0, "epochs": 60, "smoothing": 1.0, "score": "shift"},
    {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "shift_latent_knn"},
    {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "rapp"},
    {"model": "vae", "beta": 1.0, "epochs": 60, "smoothing": 1.0, "score": "rapp"},
)
# The transform-classifier family (GEOM/GOAD: jax_vae.transforms, the scores geom and
# residual_geom), fixed before any of its candidates met a test set: a second decision after
# the rule above, by the same rule (leave-classes-out validation scores, no task in which c
# is normal; the first candidate within one standard error of the best). Class c's pool,
# simplest first: the first decision's pick for c, then the candidates below: the AE scored
# by the classifier alone (geom: its mean negative log-likelihood of the right transform over
# GEOM's 72 transforms), and the AE and the beta-VAE (beta 1, 60 epochs, smoothing 1) scored
# by residual_geom (the residual z-fused with geom). Their sweeps: --models=ae,vae --betas=1
# --epochs=60 --smoothings=1 --scores=residual,geom,residual_geom --validation_images=100,
# classes 0-9, seeds 0-2 (GEOM_PICKS below).
GEOM_CANDIDATES = (
    {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "geom"},
    {"model": "ae", "beta": None, "epochs": 60, "smoothing": 1.0, "score": "residual_geom"},
    {"model": "vae", "beta": 1.0, "epochs": 60, "smoothing": 1.0, "score": "residual_geom"},
)
# The rule's picks (indices into WITHIN_CANDIDATES) for classes 0-9, computed by
# `experiments.select --within` from experiments/results/within_e60 and fmnist_within_e60
# (a test recomputes them): --preset=best on a benchmark class runs its pick.
WITHIN_PICKS: dict[str, tuple[int, ...]] = {
    "mnist": (1,) * 10,  # The beta-VAE, residual, on every digit.
    "fashion_mnist": (0,) * 10,  # The AE, residual, on every class.
}
# The second decision's picks (indices into [the first decision's pick, *GEOM_CANDIDATES]),
# computed by `experiments.select --within` from those grids and geom_e60, fmnist_geom_e60 (a
# test recomputes them): --preset=best on a benchmark class runs its pick.
GEOM_PICKS: dict[str, tuple[int, ...]] = {
    "mnist": (0,) * 8 + (2, 0),  # The first pick, but the AE's residual_geom on digit 8.
    "fashion_mnist": (0,) * 10,  # The first pick on every class.
}
PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "best": {
        # Any other data: chosen for robustness, not a benchmark mean. The AE and the VAE at
        # beta 1, the seed spec's 30 epochs, the plain residual (no smoothing, whatever the
        # images' size); the run recommends the AE unless the VAE has no training-health
        # warning and a higher synthetic AUROC (jax_vae.health.recommend).
        # Its AE is the plain AE, so where the AE is recommended it scores as the plain AE
        # does: 60 epochs did better on 8 small tasks and .05 worse on one (docs/benchmarks.md).
        # No --score_alternatives: on images larger than 28x28 the anomaly map's largest values
        # chosen by synthetic AUROC (the rule fixed in the commit that added the flag) lost
        # more than .01 to the plain AE on 3 of 7 tasks (docs/benchmarks.md).
        "*": {"models": ("ae", "vae"), "beta": 1.0},
    },
}


def pick(dataset: str, normal_class: int) -> dict:
    """Class ``normal_class``'s pick on a benchmark: the second decision's (:data:`GEOM_PICKS`,
    an index into [the first decision's pick, *GEOM_CANDIDATES])."""
    first = WITHIN_CANDIDATES[WITHIN_PICKS[dataset][normal_class]]
    return ([first, *GEOM_CANDIDATES])[GEOM_PICKS[dataset][normal_class]]


def candidate_settings(candidate: dict) -> dict[str, object]:
    """A within-dataset candidate (:data:`WITHIN_CANDIDATES`) as a run's settings."""
    return {"models": (candidate["model"],), "epochs": candidate["epochs"],
            "score_smoothing": candidate["smoothing"], "score": candidate["score"],
            **({} if candidate["beta"] is None else {"beta": candidate["beta"]})}


def preset_values(name: str | None, dataset: str,
                  normal_class: int | None = None) -> dict[str, object]:  # fmt: skip
    """The settings preset ``name`` gives on ``dataset`` (none for no or an unknown preset).

    ``best`` on a benchmark dataset is the within-dataset rules' pick for ``normal_class``
    (:func:`pick`); for a grid (``normal_class`` None) the rule's whole pool, scored on
    the validation tasks too, from which ``experiments.select --within`` makes the headline.
    """
    if name == "best" and dataset in WITHIN_PICKS:
        if normal_class is None:
            scores = dict.fromkeys(c["score"] for c in WITHIN_CANDIDATES + GEOM_CANDIDATES)
            return {"models": ("ae", "vae"), "beta": 1.0, "epochs": 60, "score_smoothing": 1.0,
                    "score": ",".join(scores), "validation_images": 100}  # fmt: skip
        return candidate_settings(pick(dataset, normal_class))
    per_dataset = PRESETS.get(name or "", {})
    return per_dataset.get(dataset, per_dataset.get("*", {}))


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: ``base`` settings for every model, swept over these axes.

    Every model of ``base.models`` is trained for each seed and class; the
    beta-VAEs also for each beta (the AE has none); each trained model is
    scored at every smoothing (no retraining).
    """

    betas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    classes: tuple[int, ...] = tuple(range(10))
    smoothings: tuple[float, ...] = (0.0,)
    scores: tuple[str, ...] = ("residual",)  # Each trained model is scored every way.
    learning_rates: tuple[float, ...] = ()  # Empty: the base's learning rate.
    # The models' other hyperparameters as axes (--grid=noise=0.1,0.4): name -> values.
    hparams: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    group_size: int | None = None  # Models vmapped together; None: backend default.
    mesh_layout: str = "models"  # With several devices: spread models, or split batches.
    # Training images sampled per class (0: none) to score each class's models on: the
    # validation tasks of the within-dataset selection (experiments.select; no test image).
    validation_images: int = 0
    base: ExperimentConfig = ExperimentConfig()

    @classmethod
    def single(cls, config: ExperimentConfig) -> SweepConfig:
        """The grid of one run: its beta, seed, class and smoothing; data parallel."""
        return cls(
            betas=(config.beta,), seeds=(config.seed,), classes=(config.normal_class,),
            smoothings=(config.score_smoothing,), scores=(config.score,), mesh_layout="data",
            hparams={name: (value,) for name, value in config.hparams.items()}, base=config,
        )  # fmt: skip

    @property
    def rates(self) -> tuple[float, ...]:
        """The learning rates of the grid."""
        return self.learning_rates or (self.base.learning_rate,)

    @property
    def axes(self) -> dict[str, tuple[float, ...]]:
        """Every training hyperparameter of the grid and its values: ``beta``,
        ``learning_rate``, then the models' own (``--grid``). A model is trained once per
        value of the axes it reads (the optimizer's learning rate: every trained model)."""
        return {"beta": self.betas, "learning_rate": self.rates, **self.hparams}


def check_output_dir(path: str) -> None:
    """Checks that ``path`` can hold a new run: absent or an empty, writable folder.

    Raises:
      ConfigError: It is a file, holds a previous run, or cannot be created.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--output_dir {path} exists and is not a directory")
        if os.listdir(path):
            raise ConfigError(
                f"--output_dir {path} already holds files (a previous run?); "
                "choose a new folder, results are never overwritten"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--output_dir {path} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output_dir {path} cannot be created ({parent} is not a writable folder)"
        )


def prepare_output_dir(path: str) -> None:
    """Creates a new run folder and checks that it takes files, before any data is loaded.

    Raises:
      ConfigError: The folder holds files, or cannot be created or written.
    """
    check_output_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
        runs.atomic_write_bytes(os.path.join(path, ".probe"), b"")
        os.unlink(os.path.join(path, ".probe"))
    except OSError as e:
        raise ConfigError(f"--output_dir {path} cannot be written ({e.strerror or e})") from None


def validate(config: ExperimentConfig) -> None:
    """Checks every setting that needs no data; raises ConfigError naming the first bad flag.

    What needs the data (the batch against the training set, the held-out
    share against the class size) or the devices (``--num_devices``) is
    checked by the pipeline, still before any training.
    """
    c = config
    if c.preset is not None:
        rules.choice("--preset", c.preset, tuple(PRESETS))
    rules.beta("--beta", c.beta)
    rules.normal_class("--normal_class", c.normal_class)
    _validate_own_images(c)
    rules.at_least("--latent_dim", c.latent_dim, 1)
    rules.widths("--hidden_dims", c.hidden_dims)
    rules.at_least("--epochs", c.epochs, 1)
    if c.batch_size is not None:
        rules.at_least("--batch_size", c.batch_size, 1)
    rules.learning_rate("--learning_rate", c.learning_rate)
    rules.seed("--seed", c.seed)
    rules.seed("--split_seed", c.split_seed)
    rules.fraction("--val_fraction", c.val_fraction)
    if c.anomaly_fraction is not None:
        rules.fraction("--anomaly_fraction", c.anomaly_fraction)
    rules.percentile("--threshold_percentile", c.threshold_percentile)
    rules.choices("--models", c.models, registry.names() + vocab.BASELINES)
    rules.choice("--data_source", c.data_source, vocab.SOURCES)
    if c.data_source == "bundled" and c.dataset != "mnist":
        raise ConfigError(
            f"--dataset={c.dataset} is not bundled (only mnist is); use --data_source=auto, "
            "idx or tfds"
        )
    if c.data_source == "idx" and not c.data_dir:
        raise ConfigError("--data_source=idx needs --data_dir with the four IDX files")
    if c.data_dir and c.data_source == "idx" and not os.path.isdir(c.data_dir):
        raise ConfigError(f"--data_dir {c.data_dir} is not a directory")
    rules.choice("--vae_score", c.vae_score, vocab.VAE_SCORES)
    rules.at_least("--mc_samples", c.mc_samples, 1)
    rules.smoothing("--score_smoothing", c.score_smoothing, image_side(c))
    rules.choice("--score", c.score, scores.names())
    if c.score_alternatives:
        rules.choices("--score_alternatives", c.score_alternatives, scores.names())
    if "vae" in c.models:
        rules.smoothing_needs_reconstruction("--score_smoothing", c.score_smoothing, c.vae_score)
        scores.check_reconstruction("--score", c.score, c.vae_score)
        for score in c.score_alternatives:
            scores.check_reconstruction("--score_alternatives", score, c.vae_score)
    rules.at_least("--chunk_size", c.chunk_size, 1)
    rules.choice("--likelihood", c.likelihood, vocab.LIKELIHOODS)
    rules.choice("--architecture", c.architecture, vocab.ARCHITECTURES)
    if c.architecture == "conv" and (c.image_size or c.dataset not in vocab.LOCAL_DATASETS):
        # A folder's or an array's own size is checked when the images are read.
        rules.conv_depth("--hidden_dims", c.hidden_dims, *(c.image_size or (28, 28)))
    rules.at_least("--kl_warmup_epochs", c.kl_warmup_epochs, 0)
    rules.at_least("--ensemble_size", c.ensemble_size, 1)
    rules.at_least("--checkpoint_every", c.checkpoint_every, 0, " (0 = no checkpoints)")
    rules.at_least("--num_devices", c.num_devices, 0, " (0 = all)")
    for name in set(c.hparams) & set(SETTING_HPARAMS):
        raise ConfigError(f"--hparams: {name} is the setting --{name}, not one of hparams")
    check_axes("--hparams", {name: (value,) for name, value in c.hparams.items()}, c.models)
    if c.output_dir is not None:
        check_output_dir(c.output_dir)


# The hyperparameters that are also settings of their own (--beta, --learning_rate,
# --kl_warmup_epochs): --hparams and --grid name them too, and set those settings.
SETTING_HPARAMS = ("beta", "learning_rate", "kl_warmup_epochs")
# The rule of a hyperparameter's value where it has one; any other: a finite number.
HPARAM_RULES: dict[str, Callable[[str, Any], None]] = {
    "beta": rules.beta, "learning_rate": rules.learning_rate,
    "kl_warmup_epochs": lambda name, value: rules.number(name, value, low=0),
}  # fmt: skip


def model_hparams(models: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The hyperparameters each trained model of ``models`` reads: the optimizer's learning
    rate and its registry entry's (``ModelSpec.hparams``)."""
    return {m: ("learning_rate", *registry.get(m).hparams) for m in models
            if m not in vocab.BASELINES}  # fmt: skip


def check_axes(flag: str, axes: dict[str, tuple[float, ...]], models: tuple[str, ...]) -> None:
    """Each of ``axes`` is read by a model of ``models`` and each value follows its rule.

    Raises:
      ConfigError: Naming the axis and the selected models' hyperparameters.
    """
    if not axes:
        return
    declared = model_hparams(tuple(m for m in models if m in registry.names() + vocab.BASELINES))
    listing = "; ".join(f"{m}: {', '.join(h)}" for m, h in declared.items())
    known = f"(the selected models' hyperparameters: {listing or 'none, baselines only'})"
    for name, values in axes.items():
        if not any(name in h for h in declared.values()):
            raise ConfigError(f"{flag}: no selected model reads {name!r} {known}")
        if not values:
            raise ConfigError(f"{flag}: {name} needs at least one value")
        for value in values:
            try:
                HPARAM_RULES.get(name, rules.number)(f"{flag} {name}", value)
            except rules.InvalidArgument as e:
                raise ConfigError(f"{e} {known}") from None


def image_side(c: ExperimentConfig) -> int | None:
    """The images' shorter side where the flags tell it: 28 for the named datasets, the
    --image_size of a folder; None for a user's images of their own size (read later)."""
    if c.dataset not in vocab.LOCAL_DATASETS:
        return 28
    return min(c.image_size) if c.image_size else None


def data_options(c: ExperimentConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`jax_vae.data.load_dataset` after the source."""
    return {"dataset": c.dataset, "data_dir": c.data_dir, "channels": c.channels,
            "image_size": tuple(c.image_size) or None}  # fmt: skip


def _validate_own_images(c: ExperimentConfig) -> None:
    """--dataset (a named one, or a folder or array file of the user's) and what it needs."""
    rules.choice("--dataset", c.dataset, vocab.DATASETS + vocab.LOCAL_DATASETS)
    rules.channels("--channels", c.channels)
    if c.image_size:
        rules.image_size("--image_size", c.image_size, c.channels or 1)
    if (c.channels or c.image_size) and c.dataset != "folder":
        raise ConfigError("--channels and --image_size convert the images of --dataset=folder; "
                          f"{c.dataset}'s images are used as they are")  # fmt: skip
    if c.dataset not in vocab.LOCAL_DATASETS:
        return
    what = "a folder with train/ (and test/<kind>/)" if c.dataset == "folder" else \
        "a .npy or .npz file"  # fmt: skip
    if not c.data_dir:
        raise ConfigError(f"--dataset={c.dataset} needs --data_dir: {what}")
    if not os.path.exists(c.data_dir):
        raise ConfigError(f"--data_dir {c.data_dir} does not exist (--dataset={c.dataset} reads "
                          f"{what})")  # fmt: skip
    if not (os.path.isdir if c.dataset == "folder" else os.path.isfile)(c.data_dir):
        raise ConfigError(f"--data_dir {c.data_dir} is not {what}")
    if c.data_source != "auto":
        raise ConfigError(f"--data_source is for the named datasets; --dataset={c.dataset} "
                          "reads --data_dir")  # fmt: skip
    if c.normal_class != 0:
        raise ConfigError(f"--normal_class: --dataset={c.dataset} has one normal class (0): "
                          "its normal images")  # fmt: skip


def validate_sweep(config: SweepConfig) -> None:
    """Checks every axis and the base settings at each axis value; ConfigError names the flag."""
    for flag, values, rule in (
        ("--betas", config.betas, rules.beta),
        ("--learning_rates", config.rates, rules.learning_rate),
        ("--seeds", config.seeds, rules.seed),
        ("--classes", config.classes, rules.normal_class),
        ("--score_smoothing", config.smoothings,
         lambda flag, v: rules.smoothing(flag, v, image_side(config.base))),
    ):
        if not values:
            raise ConfigError(f"{flag} needs at least one value")
        for value in values:
            rule(flag, value)
    if config.group_size is not None:
        rules.at_least("--group_size", config.group_size, 0)
    rules.choice("--mesh_layout", config.mesh_layout, vocab.LAYOUTS)
    rules.at_least("--validation_images", config.validation_images, 0)
    rules.choices("--score", config.scores, scores.names())
    if config.base.score_alternatives and len(config.scores) * len(config.smoothings) > 1:
        raise ConfigError("--score_alternatives replace one score: give one --score and one "
                          "--score_smoothing")  # fmt: skip
    for name in set(config.hparams) & {"beta", "learning_rate"}:
        raise ConfigError(f"the {name} axis is SweepConfig's "
                          f"{'betas' if name == 'beta' else 'learning_rates'}")  # fmt: skip
    validate(config.base)
    check_axes("--grid", config.hparams, config.base.models)
    if "vae" in config.base.models:
        for smoothing in config.smoothings:
            rules.smoothing_needs_reconstruction(
                "--score_smoothing", smoothing, config.base.vae_score
            )
        for score in config.scores:
            scores.check_reconstruction("--score", score, config.base.vae_score)


def parse_list(text: str, *, name: str, item: Callable[[str], Any] = int) -> tuple:
    """Parses a comma list of ``item`` values, integer ranges included: ``0.5,1,2`` (float),
    ``0-9``, ``2-4,7`` (int) or, with a class parser, ``Sandal,Bag``. In order, no repeats.

    Raises:
      ConfigError: A value ``item`` rejects, a repeat, or nothing at all.
    """
    values: list = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, dash, hi = part.partition("-")
        try:
            if dash and lo.isdigit() and hi.isdigit():  # A range of integers: 2-4.
                values.extend(range(int(lo), int(hi) + 1))
            else:
                values.append(item(part))
        except ConfigError:
            raise
        except ValueError:
            kind = "integers or ranges like 0-9" if item is int else "a comma list of numbers"
            raise ConfigError(f"--{name} must be {kind}, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"--{name} lists a value twice: {text}")
    return tuple(values)


def parse_classes(text: str, *, name: str, dataset: str) -> tuple[int, ...]:
    """Parses classes by index, range or name: ``0-9``, ``1,7``, ``Sandal,Bag``."""
    classes = parse_list(text, name=name, item=lambda p: rules.class_index(f"--{name}", p, dataset))
    for index in classes:  # A range's ends, named with this flag.
        rules.normal_class(f"--{name}", index)
    return classes


def read_record(run_dir: str, *, flag: str) -> dict[str, Any]:
    """The ``config.json`` of a run or sweep folder (nothing imported: :func:`load_config`).

    Raises:
      ConfigError: The folder has none, or it is unreadable.
    """
    try:
        return runs.read_config(run_dir)
    except runs.RunFolderError as e:
        raise ConfigError(f"--{flag} {e}") from None


RENAMED = {"normal_digit": "normal_class", "digits": "classes"}  # Older records' names.


def _tuples(value: Any) -> Any:
    """A JSON value with its lists as tuples (in a dict's values too), as the configs hold."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _fields(cls, record: dict[str, Any]) -> dict[str, Any]:
    # Fields missing from an older record keep their defaults (the old behaviour).
    record = {RENAMED.get(k, k): v for k, v in record.items()}
    return {f.name: _tuples(record[f.name]) for f in dataclasses.fields(cls)
            if f.name in record and f.name != "base"}  # fmt: skip


def load_config(run_dir: str, *, flag: str, single: bool | None = None) -> SweepConfig:
    """The grid a run or sweep folder was started with, ``output_dir`` = the folder.

    A run's record has no grid fields: it loads as its grid of one. Runs from
    before ``--split_seed`` existed split with their ``seed``, and load so.

    Args:
      run_dir: The folder.
      flag: The flag that named it, for messages.
      single: True: the folder must hold a single run; False: a grid (a sweep or
        baselines); None: either.
    """
    record = read_record(run_dir, flag=flag)
    is_run = "betas" not in record
    if single is not None and single != is_run:
        what = "a single run (experiments.main)" if is_run else "a sweep or baselines run"
        hint = (f"; continue it with python -m experiments.main --resume={run_dir}"
                if is_run and flag == "resume" else "")  # fmt: skip
        raise ConfigError(f"--{flag} {run_dir} holds {what}, not "
                          f"{'a grid' if is_run else 'a single run'}{hint}")  # fmt: skip
    # The run's own code first (it registers its models), as it was when the run started.
    plugins.load_recorded(record.get("imports", ()), what=f"the run in {run_dir}")
    try:
        base = _fields(ExperimentConfig, record)
        if "betas" not in record:  # A single run.
            base.setdefault("split_seed", base.get("seed", 0))
            return SweepConfig.single(ExperimentConfig(**{**base, "output_dir": run_dir}))
        grid = _fields(SweepConfig, record)
        base.pop("hparams", None)  # A grid's record holds its axes under that name.
        return SweepConfig(**grid, base=ExperimentConfig(**{**base, "output_dir": run_dir}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--{flag} {run_dir}: not a config.json of this project ({e})") from None


def load_run_config(run_dir: str, *, flag: str) -> ExperimentConfig:
    """The settings of a single run's folder (see :func:`load_config`)."""
    return load_config(run_dir, flag=flag, single=True).base
