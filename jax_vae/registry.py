"""The model registry: a model is one entry (module, per-example loss, per-example scores).

Everything downstream (training, scoring, the key schedule, the commands'
``--models`` flag, tables, plots, TensorBoard) reads a model through its entry,
so a new model is one :func:`register` call, in your own code::

    registry.register("dae", registry.ModelSpec(
        build=lambda *, architecture, **sizes: models.AutoEncoder(**sizes),
        loss=my_denoising_loss,                  # (module, *, likelihood) -> loss
        score=lambda module, *, smoothing=0.0, **_: scoring.reconstruction_score(
            module.apply, smoothing=smoothing, image_shape=module.image_shape),
        reconstruct=lambda module: module.apply,
        hparams={"noise": 0.2},                  # Read by the loss; each can be swept.
    ))

A model's keys come from its name (:func:`jax_vae.keys.model_id`), so registering a
model never changes another model's keys. This module imports no JAX until an entry
is used, so checking a flag against :func:`names` is cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from jax_vae import rules, spec, vocab

BUILTIN = ("ae", "vae")


def init_module(module: Any, key: Any, x: Any, *extra: Any) -> Any:
    """Initializes a module called as ``module(x, *extra)``; compiled, not run op by op (the
    conv models' forward pass is hundreds of small operations), once per module and shapes."""
    return _jitted_init(module)(key, x, *extra)


@functools.lru_cache(maxsize=64)
def _jitted_init(module: Any) -> Callable[..., Any]:
    import jax  # noqa: PLC0415

    return jax.jit(module.init)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """One model kind.

    Attributes:
      build: ``build(*, hidden_dims, latent_dim, architecture, image_shape) -> flax
        module``; ``image_shape`` is (height, width, channels) of the flattened images.
      loss: ``loss(module, *, likelihood) -> loss(params, x, key, hparams) -> terms``
        (:mod:`jax_vae.losses`): per example, with ``"total"`` among the terms.
      score: ``score(module, *, vae_score, mc_samples, likelihood, smoothing)
        -> score(params, x, key)``, per example (:mod:`jax_vae.scoring`); a
        model ignores the options it has no use for.
      reconstruct: ``reconstruct(module) -> reconstruct(params, x)``: one
        image's deterministic reconstruction (plots, residual maps).
      init: ``init(module, key, x) -> params``.
      hparams: The hyperparameters the loss reads, with their defaults. Each
        is a leaf of the hparams pytree that training takes, so each can be a
        vmapped axis; the commands sweep ``beta`` for models that read it.
      encode: Optional ``encode(module) -> code(params, x)``: the latent code
        the plots show and the latent scores use (none when None).
    """

    build: Callable[..., Any]
    loss: Callable[..., Any]
    score: Callable[..., Any]
    reconstruct: Callable[..., Any]
    init: Callable[..., Any] = init_module
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    encode: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A built model: its module and the pure functions training and scoring call.

    Attributes:
      name: The registry name.
      module: The Flax module.
      spec: Its registry entry.
      loss: The per-example loss ``loss(params, x, key, hparams) -> terms``.
    """

    name: str
    module: Any
    spec: ModelSpec
    loss: Callable[..., Any]

    def init(self, key: Any, x: Any) -> Any:
        """Parameters from one key (used once) and one example input."""
        return self.spec.init(self.module, key, x)

    def score(self, **options: Any) -> Callable[..., Any]:
        """The per-example score with these options (see :class:`ModelSpec`): the same
        function for the same options, so that scoring reuses its compiled programs."""
        key = tuple(sorted(options.items()))
        try:
            hash(key)
        except TypeError:  # An unhashable option: built afresh.
            return self.spec.score(self.module, **options)
        return _score(self, key)

    def reconstruct(self) -> Callable[..., Any]:
        """The per-example deterministic reconstruction ``(params, x) -> x_hat``."""
        return self.spec.reconstruct(self.module)

    @property
    def hparams(self) -> dict[str, float]:
        """The hyperparameters the loss reads, at their defaults."""
        return dict(self.spec.hparams)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec, *, replace: bool = False) -> None:
    """Adds a model kind under ``name`` (``replace`` to redefine one)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier, got {name!r}")
    if name in vocab.BASELINES:
        raise ValueError(f"name {name!r} is a baseline's")
    if not replace and name in names():
        raise ValueError(f"model {name!r} is registered already (pass replace=True)")
    _REGISTRY[name] = spec


def unregister(name: str) -> None:
    """Removes a model kind added with :func:`register`."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every model's name: the built-in ``ae`` and ``vae``, then registered ones."""
    return (*BUILTIN, *(n for n in _REGISTRY if n not in BUILTIN))


def get(name: str) -> ModelSpec:
    """The entry of model ``name``."""
    rules.choice("name", name, names())
    if name not in _REGISTRY:
        _REGISTRY.update({n: s for n, s in _builtins().items() if n not in _REGISTRY})
    return _REGISTRY[name]


def reads(name: str, hparam: str) -> bool:
    """Whether model ``name``'s loss reads ``hparam`` (e.g. only the VAE reads beta)."""
    return hparam in get(name).hparams


def build(
    name: str,
    *,
    hidden_dims: tuple[int, ...] = spec.HIDDEN_DIMS,
    latent_dim: int = spec.LATENT_DIM,
    architecture: str = "mlp",
    likelihood: str = "gaussian",
    image_shape: tuple[int, int, int] = (28, 28, 1),
) -> Model:
    """Builds model ``name``: its module and its per-example loss.

    Args:
      name: A registered name (``ae``, ``vae``, or your own).
      hidden_dims: Encoder widths (the decoder mirrors them); for
        ``architecture="conv"``, the channels of the strided convolutions.
      latent_dim: Size of the code.
      architecture: ``mlp`` or ``conv``.
      likelihood: The reconstruction term: ``gaussian`` or ``bernoulli``.
      image_shape: (height, width, channels) of the images (flattened for the models).
    """
    spec = get(name)
    rules.choice("architecture", architecture, vocab.ARCHITECTURES)
    rules.widths("hidden_dims", tuple(hidden_dims))
    rules.at_least("latent_dim", latent_dim, 1)
    rules.choice("likelihood", likelihood, vocab.LIKELIHOODS)
    image_shape = tuple(image_shape)
    rules.image_shape("image_shape", image_shape)
    if architecture == "conv":
        rules.conv_depth("hidden_dims", tuple(hidden_dims), *image_shape[:2])
    return _build(spec, name, tuple(hidden_dims), latent_dim, architecture, likelihood,
                  image_shape)  # fmt: skip


# A model and its score functions are pure, so equal requests share one object: jit's caches
# are keyed on functions, and a second training or scoring of the same model (a notebook's
# second run, the next class of a grid, a re-scored run) reuses the compiled programs instead
# of tracing and compiling them again. A re-registered entry is a new key.
@functools.lru_cache(maxsize=64)
def _build(spec: ModelSpec, name: str, hidden_dims: tuple[int, ...], latent_dim: int,
           architecture: str, likelihood: str, image_shape: tuple[int, int, int]) -> Model:
    module = spec.build(hidden_dims=hidden_dims, latent_dim=latent_dim,
                        architecture=architecture, image_shape=image_shape)  # fmt: skip
    return Model(name, module, spec, spec.loss(module, likelihood=likelihood))


@functools.lru_cache(maxsize=256)
def _score(model: Model, options: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
    return model.spec.score(model.module, **dict(options))


def _builtins() -> dict[str, ModelSpec]:
    from jax_vae import losses, models, scoring  # noqa: PLC0415  (JAX: only when used)

    def builder(mlp, conv):
        def make(*, hidden_dims, latent_dim, architecture, image_shape):
            cls = conv if architecture == "conv" else mlp
            return cls(hidden_dims=hidden_dims, latent_dim=latent_dim, image_shape=image_shape)

        return make

    def ae_score(module, *, smoothing=0.0, **_):
        return scoring.reconstruction_score(module.apply, smoothing=smoothing,
                                            image_shape=module.image_shape)  # fmt: skip

    def vae_init(module, key, x):
        import jax  # noqa: PLC0415

        param_key, sample_key = jax.random.split(key)
        return init_module(module, param_key, x, sample_key)

    return {
        "ae": ModelSpec(
            build=builder(models.AutoEncoder, models.ConvAutoEncoder),
            loss=losses.autoencoder_loss, score=ae_score,
            reconstruct=scoring.autoencoder_reconstruct,
            encode=lambda module: lambda p, x: module.apply(p, x, method="encode"),
        ),
        "vae": ModelSpec(
            build=builder(models.VAE, models.ConvVAE),
            loss=losses.vae_loss, score=scoring.vae_score_fn,
            reconstruct=scoring.vae_reconstruct, init=vae_init,
            hparams={"beta": 1.0, "kl_warmup_epochs": 0},
            encode=lambda module: lambda p, x: module.apply(p, x, method="encode")[0],
        ),
    }  # fmt: skip
