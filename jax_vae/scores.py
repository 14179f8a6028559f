"""The score registry: a way of scoring a trained model is one entry.

An entry says what a score needs from the training split (``features``: a per-example
function of the model's training images, e.g. their latent codes, stacked into a bank;
``reduce`` turns the bank into what the score keeps) and how it scores one example
(``score``), or, for a fusion, which scores it sums, each standardized by its mean and
standard deviation over the held-out normals. Everything a score fits is saved with the
run (:func:`jax_vae.runs.write_fitted_scores`), so a run scored any way loads as a
:class:`jax_vae.detector.Detector` and scores new images as it scored its test set::

    scores.register("max_residual", scores.ScoreSpec(
        score=lambda model, **options: lambda params, fitted, x, key: jnp.max(
            jnp.square(x - model.reconstruct()(params, x))),
    ))

Registered in a file of yours, it is usable as ``--score=max_residual`` after
``--import``. The built-in scores: ``residual`` (the model's reconstruction error at the
smoothing; for the VAE as ``vae_score`` says), ``shift`` (its minimum over one-pixel shifts),
``latent_distance`` and ``pixel_distance`` (the mean squared distance to the 5 nearest
training images' codes or pixels), and the fusions ``latent_knn``, ``pixel_knn`` (the
residual with a distance) and ``shift_latent_knn``, ``shift_pixel_knn`` (the shift score
with one); RaPP (Kim et al., ICLR 2020: the encoder's activations on the image against on its
reconstruction, layer by layer): ``rapp_sap`` (their summed squares), ``rapp_nap`` (whitened
by the principal axes of the training images' differences) and the fusion ``rapp``
(residual + NAP); and scores of the anomaly map rather than its mean, as anomalib scores
images: ``residual_max`` (its largest value) and ``residual_top`` (the mean of its largest
1%); and a self-supervised transform classifier (GEOM/GOAD, :mod:`jax_vae.transforms`,
trained on the training images): ``geom`` (its negative log-likelihood of the right
transforms) and the fusion ``residual_geom`` (residual + geom). Like
:mod:`jax_vae.registry`, this module imports no JAX until an entry is used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jax_vae import rules


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreSpec:
    """One way of scoring a trained model.

    Attributes:
      score: ``score(model, *, smoothing, vae_score, mc_samples, likelihood) ->
        fn(params, fitted, x, key) -> scalar`` for one flattened image ``x`` (higher: more
        anomalous); ``fitted`` is what the entry fit on the training split (None without
        ``features``). A score ignores the options it has no use for. None for a fusion.
      features: Optional ``features(model) -> fn(params, x) -> array``: applied to every
        training image of the model, stacked into a bank [N, ...].
      reduce: Optional ``reduce(bank) -> fitted`` (an array or a dict of arrays, e.g. the
        SVD of the bank, or a classifier's parameters); None keeps the bank as it is.
        With ``keyed``, ``reduce(bank, key, model)``: the key is the component's own
        (:func:`jax_vae.keys.fit_key` under the model's scoring key).
      parts: A fusion: the names of the scores it sums, each standardized by its mean and
        standard deviation over the held-out normals (per model).
      smoothed: Whether the score reads ``smoothing`` (one component per smoothing of a
        grid) or not (one for all).
      needs_code: Whether it needs a model with a latent code (``ModelSpec.encode``).
      keyed: Whether ``reduce`` is random (it trains something): it takes a key and the model.
    """

    score: Callable[..., Any] | None = None
    features: Callable[..., Any] | None = None
    reduce: Callable[..., Any] | None = None
    parts: tuple[str, ...] = ()
    smoothed: bool = True
    needs_code: bool = False
    keyed: bool = False


_REGISTRY: dict[str, ScoreSpec] = {}
BUILTIN = ("residual", "shift", "latent_knn", "pixel_knn", "shift_latent_knn", "shift_pixel_knn",
           "latent_distance", "pixel_distance", "rapp_sap", "rapp_nap", "rapp",
           "residual_max", "residual_top", "geom", "residual_geom")  # fmt: skip
SHIFTS = 1  # The shift score: images shifted by up to one pixel each way (9 copies).
NEIGHBOURS = 5  # The distances: the mean over the 5 nearest training images.
# The anomaly map's image scores, for small defects on large images: the alternatives to the
# residual tried by synthetic AUROC (--score_alternatives; docs/benchmarks.md).
MAP_SCORES = ("residual_top", "residual_max")
TOP = 0.01  # residual_top: the mean of the largest 1% of the anomaly map's values.
RANK_TOLERANCE = 1e-5  # rapp_nap: directions with singular values below this share: dropped.


def register(name: str, spec: ScoreSpec, *, replace: bool = False) -> None:
    """Adds a score under ``name`` (``replace`` to redefine one)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier, got {name!r}")
    if not replace and name in names():
        raise ValueError(f"score {name!r} is registered already (pass replace=True)")
    if (spec.score is None) == (not spec.parts):
        raise ValueError("a score has either a score function or the parts of a fusion")
    for part in spec.parts:
        if get(part).parts:
            raise ValueError(f"a fusion's parts are plain scores; {part!r} is a fusion")
    _REGISTRY[name] = spec


def unregister(name: str) -> None:
    """Removes a score added with :func:`register`."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every score's name: the built-in ones, then registered ones."""
    return (*BUILTIN, *(n for n in _REGISTRY if n not in BUILTIN))


def get(name: str) -> ScoreSpec:
    """The entry of score ``name``."""
    rules.choice("score", name, names())
    if name not in _REGISTRY:
        _REGISTRY.update({n: s for n, s in _builtins().items() if n not in _REGISTRY})
    return _REGISTRY[name]


def needs_code(name: str) -> bool:
    """Whether score ``name`` (or a part of it) needs a model with a latent code."""
    spec = get(name)
    return spec.needs_code or any(get(p).needs_code for p in spec.parts)


def check_reconstruction(flag: str, name: str, vae_score: str) -> None:
    """The scores beyond the model's own (``residual``) reconstruct deterministically: with
    a VAE, they need ``vae_score=mean``."""
    if name != "residual" and vae_score != "mean":
        raise rules.InvalidArgument(f"{flag}={name} needs vae_score=mean, not {vae_score}")


Component = tuple[str, float | None]  # A plain score at a smoothing (None: it reads none).


def label(component: Component) -> str:
    """A component's name in saved files: ``latent_distance``, ``residual@1``."""
    name, smoothing = component
    return name if smoothing is None else f"{name}@{smoothing:g}"


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
    """The scores of one model, each at each smoothing (the grid's columns), computed as
    one per-example function of the plain scores they need (the components: a
    reconstruction computed once for every smoothing and fusion that reads it).

    Built by :func:`scorer`. Attributes:
      model: The built model (:func:`jax_vae.registry.build`).
      columns: (score, smoothing) pairs, in the order of the outputs' last axis.
      components: The plain scores the columns need, in the order of ``fn``'s outputs.
      fn: ``fn(inputs, x, key) -> [len(components)]`` for one image; ``inputs`` is
        :meth:`inputs`' (the parameters alone when nothing is fitted).
    """

    model: Any
    columns: tuple[tuple[str, float], ...]
    components: tuple[Component, ...]
    fn: Callable[..., Any]

    @property
    def fits(self) -> tuple[Component, ...]:
        """The components that fit a bank on the training split."""
        return tuple(c for c in self.components if get(c[0]).features is not None)

    @property
    def fused(self) -> tuple[Component, ...]:
        """The components that a fusion standardizes on the held-out normals."""
        return tuple(c for c in self.components
                     if any(c[0] in get(s).parts for s, _ in self.columns))  # fmt: skip

    def fit(self, params: Any, train_images: Any, *, key: Any = None, chunk_size: int = 2048,
            stacked: bool = False) -> dict[str, Any]:  # fmt: skip
        """What the components fit on the training split, by component label (``{}`` when
        none does): each bank is its features of every training image, reduced.

        Args:
          params: The model's parameters ([K, ...] with ``stacked``).
          train_images: The model's training images.
          key: The model's scoring key ([K] with ``stacked``); needed by a ``keyed`` score.
          chunk_size: Images per chunk of the features' map.
          stacked: ``params`` and ``key`` hold K models.

        Raises:
          ValueError: A keyed score and no key.
        """
        import jax  # noqa: PLC0415

        from jax_vae import keys, scoring  # noqa: PLC0415

        fitted = {}
        for component in self.fits:
            spec, name = get(component[0]), label(component)
            bank = jax.numpy.asarray(scoring.map_chunked(
                _features(self.model, component[0]), params, train_images,
                chunk_size=chunk_size, stacked=stacked))  # fmt: skip
            if spec.keyed:
                if key is None:
                    raise ValueError(f"score {name} trains on the training split: pass a key")
                reduce = functools.partial(_keyed_reduce, spec.reduce, self.model, name)
                bank = (jax.vmap(reduce) if stacked else reduce)(bank, keys.as_typed(key))
            elif spec.reduce is not None:
                bank = (jax.vmap(spec.reduce) if stacked else spec.reduce)(bank)
            fitted[name] = bank
        return fitted

    def inputs(self, params: Any, fitted: Mapping[str, Any]) -> Any:
        """What :attr:`fn` takes: the parameters, with the fitted banks where there are any
        (the plain residual takes the parameters alone, as it always has)."""
        return {"model": params, "fitted": dict(fitted)} if self.fits else params

    def standardize(self, val: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The fused components' mean and standard deviation over the held-out normals'
        scores ``val`` [..., N, components] (per model where there is a leading axis)."""
        stats = {}
        for component in self.fused:
            column = val[..., self.components.index(component)]
            stats[label(component)] = (np.mean(column, axis=-1, keepdims=True),
                                        np.std(column, axis=-1, keepdims=True))  # fmt: skip
        return stats

    def combine(self, scores: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
        """The columns [..., N, columns] from the components' scores [..., N, components]:
        a plain score as it is, a fusion the sum of its parts standardized by ``stats``."""
        out = []
        for name, smoothing in self.columns:
            spec = get(name)
            if not spec.parts:
                out.append(scores[..., self.components.index(_component(name, smoothing))])
                continue
            total = None
            for part in spec.parts:
                component = _component(part, smoothing)
                mean, std = (np.asarray(a) for a in stats[label(component)])
                z = (scores[..., self.components.index(component)] - mean) / np.where(
                    std > 0, std, 1.0)
                total = z if total is None else total + z
            out.append(total)
        return np.stack(out, axis=-1)


def _component(name: str, smoothing: float) -> Component:
    return (name, smoothing if get(name).smoothed else None)


def scorer(model: Any, columns: Sequence[tuple[str, float]], **options: Any) -> Scorer:
    """The :class:`Scorer` of ``model`` for its ``columns`` ((score, smoothing) pairs) with
    the model's score ``options`` (``vae_score``, ``mc_samples``, ``likelihood``); equal
    requests give the same object, so scoring reuses its compiled programs.

    Raises:
      InvalidArgument: An unknown score, or one that needs a latent code the model has not.
    """
    columns = tuple((name, float(smoothing)) for name, smoothing in columns)
    for name, _ in columns:
        get(name)
        if needs_code(name) and model.spec.encode is None:
            raise rules.InvalidArgument(f"score {name} needs a model with a latent code; "
                                        f"{model.name} has none")  # fmt: skip
    return _scorer(model, columns, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=64)
def _scorer(model: Any, columns: tuple, options: tuple) -> Scorer:
    import jax.numpy as jnp  # noqa: PLC0415

    components: list[Component] = []
    for name, smoothing in columns:
        for part in get(name).parts or (name,):
            component = _component(part, smoothing)
            if component not in components:
                components.append(component)
    fns = [_plain(model, name, tuple(sorted({**dict(options), "smoothing": s or 0.0}.items())))
           for name, s in components]
    labels = [label(c) for c in components]
    if not any(get(name).features for name, _ in components):
        from jax_vae import scoring  # noqa: PLC0415

        # The parameters alone: one program per set of plain scores, shared across models.
        stacked = scoring.stack_scores(tuple(functools.partial(_no_fit, f) for f in fns))
    else:

        def stacked(inputs, x, key):
            return jnp.stack([f(inputs["model"], inputs["fitted"].get(label), x, key)
                              for f, label in zip(fns, labels, strict=True)])  # fmt: skip

    return Scorer(model, columns, tuple(components), stacked)


@functools.lru_cache(maxsize=64)
def _features(model: Any, name: str) -> Callable[..., Any]:
    """A score's features as the per-example function scoring maps (one object per model)."""
    features = get(name).features(model)
    return lambda params, x, key: features(params, x)


def _keyed_reduce(reduce: Callable[..., Any], model: Any, name: str, bank: Any, key: Any) -> Any:
    from jax_vae import keys  # noqa: PLC0415

    return reduce(bank, keys.fit_key(key, name), model)


def _no_fit(fn: Callable[..., Any], params: Any, x: Any, key: Any) -> Any:
    return fn(params, None, x, key)


@functools.lru_cache(maxsize=256)
def _plain(model: Any, name: str, options: tuple) -> Callable[..., Any]:
    """A plain score's per-example function for one model and options (one object each)."""
    return get(name).score(model, **dict(options))


def _builtins() -> dict[str, ScoreSpec]:
    import jax  # noqa: PLC0415  (JAX: only when used)
    import jax.numpy as jnp  # noqa: PLC0415

    from jax_vae import scoring  # noqa: PLC0415

    def own(model, **options):  # The model's own score (its registry entry's).
        inner = model.score(**options)
        return lambda params, fitted, x, key: inner(params, x, key)

    def shift(model, *, smoothing=0.0, **_):
        inner = scoring.shift_score(model.reconstruct(), smoothing=smoothing, shifts=SHIFTS,
                                    image_shape=model.module.image_shape)  # fmt: skip
        return lambda params, fitted, x, key: inner(params, x, key)

    def code(model):
        return model.spec.encode(model.module)

    def latent(model, **_):
        encode = code(model)
        return lambda params, bank, x, key: scoring.knn_distance(encode(params, x), bank,
                                                                 NEIGHBOURS)

    def pixel(model, **_):
        return lambda params, bank, x, key: scoring.knn_distance(x, bank, NEIGHBOURS)

    def rapp_diffs(model):  # RaPP: the encoder's activations on x minus on its reconstruction.
        reconstruct = model.reconstruct()

        def hidden(params, x):
            _, state = model.module.apply(params, x, method="encode",
                                          capture_intermediates=True, mutable=["intermediates"])
            return jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(state)])

        return lambda params, x: hidden(params, x) - hidden(params, reconstruct(params, x))

    def sap(model, **_):
        diffs = rapp_diffs(model)
        return lambda params, fitted, x, key: jnp.sum(jnp.square(diffs(params, x)))

    def nap(model, **_):
        diffs = rapp_diffs(model)

        def score(params, fitted, x, key):
            z = (diffs(params, x) - fitted["mean"]) @ fitted["basis"] * fitted["inverse"]
            return jnp.sum(jnp.square(z))

        return score

    def whiten(bank):  # The training normals' differences: their mean and principal axes.
        mean = jnp.mean(bank, axis=0)
        _, singular, rows = jnp.linalg.svd(bank - mean, full_matrices=False)
        keep = singular > RANK_TOLERANCE * singular[0]
        return {"mean": mean, "basis": rows.T,
                "inverse": jnp.where(keep, 1.0 / jnp.where(keep, singular, 1.0), 0.0)}

    def map_score(reduce):
        def make(model, *, smoothing=0.0, **_):
            shape, reconstruct = model.module.image_shape, model.reconstruct()
            anomaly_map = scoring.anomaly_map(smoothing, shape)

            def score(params, fitted, x, key):
                return reduce(anomaly_map(x, reconstruct(params, x)).reshape(-1))

            return score

        return make

    def geom_fit(bank, key, model):
        from jax_vae import transforms  # noqa: PLC0415

        return transforms.fit(key, bank, model.module.image_shape)

    def geom(model, **_):
        from jax_vae import transforms  # noqa: PLC0415

        shape = model.module.image_shape
        return lambda params, fitted, x, key: transforms.score(fitted, x, shape)

    def top(values):
        k = max(1, int(round(TOP * values.size)))
        return jnp.mean(jax.lax.top_k(values, k)[0])

    return {
        "residual": ScoreSpec(score=own),
        "rapp_sap": ScoreSpec(score=sap, smoothed=False, needs_code=True),
        "rapp_nap": ScoreSpec(score=nap, features=rapp_diffs, reduce=whiten, smoothed=False,
                              needs_code=True),
        "rapp": ScoreSpec(parts=("residual", "rapp_nap")),
        "residual_max": ScoreSpec(score=map_score(jnp.max)),
        "residual_top": ScoreSpec(score=map_score(top)),
        "geom": ScoreSpec(score=geom, features=lambda model: lambda p, x: x, reduce=geom_fit,
                          smoothed=False, keyed=True),
        "residual_geom": ScoreSpec(parts=("residual", "geom")),
        "shift": ScoreSpec(score=shift),
        "latent_distance": ScoreSpec(score=latent, features=code, smoothed=False,
                                     needs_code=True),
        "pixel_distance": ScoreSpec(score=pixel, features=lambda model: lambda p, x: x,
                                    smoothed=False),
        "latent_knn": ScoreSpec(parts=("residual", "latent_distance")),
        "pixel_knn": ScoreSpec(parts=("residual", "pixel_distance")),
        "shift_latent_knn": ScoreSpec(parts=("shift", "latent_distance")),
        "shift_pixel_knn": ScoreSpec(parts=("shift", "pixel_distance")),
    }  # fmt: skip
