"""One pipeline for runs, sweeps and baselines: grid -> train -> evaluate -> records.

A single run is a grid of one (:meth:`SweepConfig.single`). For each class of
the grid: its one-class split, computed once; for each model kind of the
registry, every (beta, learning rate, seed) point (times the ensemble members)
trained together as one vmapped program (:func:`_train`), restored from its
checkpoints (:func:`_restore`, ``--eval_only``), or, for a scikit-learn
baseline, fitted per seed (:func:`_fit_baselines`); each returns a
:class:`Group`, scored by :func:`_score` on the held-out normals, the test set
and the synthetic anomalies at every smoothing, and evaluated by
:func:`jax_vae.metrics.evaluate`. A single run's previews for its plots are
computed here too (:func:`_previews`).
Keys come from :mod:`jax_vae.keys`, so the library alone reproduces each row.
:mod:`experiments.report` turns the records into files.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import os
import platform
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments.config import (
    SETTING_HPARAMS,
    ConfigError,
    SweepConfig,
    as_flags,
    data_options,
    prepare_output_dir,
    read_record,
    validate_sweep,
)
from experiments.tensorboard import Board, run_name
from experiments.timing import Timings
from jax_vae import (
    data,
    health,
    keys,
    registry,
    rules,
    runs,
    scores,
    scoring,
    sharding,
    spec,
    train,
    vocab,
)
from jax_vae.checkpoints import Checkpointer
from jax_vae.metrics import evaluate, separation_auroc, threshold_warning

GRID_IMAGES = 8  # Normal and anomalous test images each in a run's reconstruction plot.
LATENT_POINTS = 5000  # Test images in a run's latent scatter plot.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "scikit-learn", "absl-py")
KINDS = runs.KINDS


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to continue (a KeyboardInterrupt)."""


@dataclasses.dataclass
class Group:
    """One (class, model) of the grid, trained and scored: its points' results."""

    normal: int  # The normal class.
    name: str
    points: list[dict[str, Any]]  # Each model's beta, learning_rate (None where none) and seed.
    scores: scoring.Parts | None  # [points, images, smoothings] each; None until scored.
    history: dict[str, np.ndarray] | None  # Per point [points, epochs]; None for baselines.
    params: Any = None  # The first point's (an ensemble's first member), for a run's previews.
    model: registry.Model | None = None
    fitted: tuple | None = None  # A single model's fitted scores: (banks, statistics).
    # With the grid's validation_images: the scores [points, images, columns] of other
    # classes' training images, and each image's class.
    validation: np.ndarray | None = None
    validation_classes: np.ndarray | None = None
    # With --score_alternatives on large images: each point's score, chosen from normal data
    # ({"score", "why", "synthetic_auroc"}: jax_vae.health.choose_score); its columns only.
    choices: list[dict[str, Any]] | None = None


@dataclasses.dataclass
class Previews:
    """What a single run's plots show that only the models can compute (the report draws)."""

    inputs: np.ndarray  # Test images, normal then anomalous (held-out normals without a test set).
    titles: list[str]
    image_shape: tuple[int, int, int]
    reconstructions: dict[str, np.ndarray]  # Per model, of the inputs.
    codes: np.ndarray | None  # Latent codes of test images (a VAE's means, else any model's).
    code_classes: np.ndarray | None
    names: tuple[str, ...]  # Of the classes (a folder's: its normal images, then its kinds).


@dataclasses.dataclass
class Result:
    """Everything a command reports: the records and, for a single run, their details."""

    kind: str
    grid: SweepConfig
    output_dir: str
    record: dict[str, Any]  # config.json.
    rows: list[dict[str, Any]]  # One per (class, model, beta, seed, smoothing).
    groups: list[Group]
    splits: dict[int, data.OneClassSplit]  # Kept for single runs only.
    tensorboard: str | None  # The event folder (None: no events); the report adds its plots.
    timings: Timings  # Seconds per phase; the report adds its own and records them.
    previews: Previews | None = None  # A single run's.


def config_model(base, name: str, image_shape=(28, 28, 1)) -> registry.Model:
    """Model ``name`` with the configured widths, latent size, architecture and likelihood,
    for images of ``image_shape`` (height, width, channels)."""
    return registry.build(
        name, hidden_dims=base.hidden_dims, latent_dim=base.latent_dim,
        architecture=base.architecture, likelihood=base.likelihood, image_shape=image_shape,
    )  # fmt: skip


def config_mesh(base, layout: str) -> jax.sharding.Mesh | None:
    """The mesh over ``--num_devices`` devices (all when 0); None for a single device."""
    if base.num_devices > jax.device_count():
        raise ConfigError(
            f"--num_devices {base.num_devices} exceeds the {jax.device_count()} visible devices"
        )
    width = base.num_devices or jax.device_count()
    if layout == sharding.DATA:
        with as_flags(" (see --num_devices)"):
            sharding.check_data_parallel(base.batch_size, width)
    return sharding.make_mesh(layout, devices=jax.devices()[:width]) if width > 1 else None


def host_cpu() -> str:
    """The host CPU's model and widest x86 vector extension (``AMD EPYC (avx2)``; elsewhere
    what ``platform`` knows). XLA:CPU's kernels choose their instructions by the CPU, so a
    training's numbers can differ in their last bits between CPUs of other kinds."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    widest = next((ext for ext in ("avx512f", "avx2", "avx") if ext in flags), None)
    model = name.group(1).strip() if name else platform.processor() or platform.machine()
    return f"{model} ({widest})" if widest else model


def environment_record() -> dict[str, Any]:
    """Package versions, devices and the host CPU, for reproducibility."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}" for d in jax.devices()],
        "backend": jax.default_backend(),
        "cpu": host_cpu(),
    }


def points_of(grid: SweepConfig, name: str) -> list[dict[str, Any]]:
    """Every model of one kind the grid trains: one per value of each axis the model reads
    (:attr:`SweepConfig.axes`; None for the axes it does not read, so it is trained once for
    them) and seed. A baseline reads none; every trained model reads the learning rate."""
    trained = name not in vocab.BASELINES
    axes = {axis: values if trained and (axis == "learning_rate" or registry.reads(name, axis))
            else (None,) for axis, values in grid.axes.items()}  # fmt: skip
    return [{**dict(zip(axes, combination, strict=True)), "seed": seed}
            for combination in itertools.product(*axes.values()) for seed in grid.seeds]


def _name(base, index: int) -> str:
    """The class in messages and logs: ``digit 3``, ``Sandal``."""
    return vocab.class_label(base.dataset, index)


def default_output_dir(kind: str, grid: SweepConfig) -> str:
    """A path under ``runs/`` not yet taken, named after the time and what the grid runs (the
    documented default of ``--output_dir``: ``<time>_digit3_beta2``, ``..._preset-best``)."""
    base = grid.base
    if kind == "run":
        # A preset names itself: --preset=best may train no model that has a beta. Otherwise
        # the run's beta where a model reads one (else its models), and its own hyperparameters;
        # a user's images are named after their folder or file and the models trained.
        trained = [m for m in base.models if m not in vocab.BASELINES]
        reads_beta = any(registry.reads(m, "beta") for m in trained)
        if base.dataset in vocab.LOCAL_DATASETS:
            source = os.path.splitext(os.path.basename(os.path.normpath(base.data_dir)))[0]
            what = "-".join(base.models) + (f"_beta{base.beta:g}" if reads_beta else "")
            where = "".join(c if c.isalnum() or c in "-_." else "-" for c in source) or "data"
        else:
            what = f"beta{base.beta:g}" if reads_beta else "-".join(base.models)
            where = vocab.class_slug(base.dataset, base.normal_class)
        if base.preset:
            what = f"preset-{base.preset}"
        what += "".join(f"_{name}{value:g}" for name, value in base.hparams.items())
        return runs.new_run_dir(f"{where}_{what}")
    return runs.new_run_dir(f"{kind}_{base.dataset}_{len(grid.classes)}classes")


def _check_splits(dataset: data.Dataset, grid: SweepConfig) -> tuple[SweepConfig, dict, dict]:
    """Every class's split rules, before any training: its sizes and fingerprint (for the
    record), and its indices (each split is computed once); and the models' rules for the
    images' size (a folder's is known only now). Returns the grid with its batch size (the
    default: the seed spec's 128, or the smallest training set where that is smaller)."""
    base, splits, indices = grid.base, {}, {}
    try:
        rules.image_shape("the images' (height, width, channels)", dataset.image_shape)
    except rules.InvalidArgument as e:
        raise ConfigError(f"{base.data_dir or base.dataset}: {e}") from None
    with as_flags():
        if base.architecture == "conv":
            rules.conv_depth("hidden_dims", base.hidden_dims, *dataset.image_shape[:2])
        for smoothing in grid.smoothings:  # A folder's image size is known only now.
            rules.smoothing("score_smoothing", smoothing, min(dataset.image_shape[:2]))
    for normal in grid.classes:
        with as_flags():
            indices[normal] = data.split_indices(
                dataset, normal_class=normal, val_fraction=base.val_fraction,
                anomaly_fraction=base.anomaly_fraction, seed=base.split_seed,
            )  # fmt: skip
    if base.batch_size is None:
        smallest = min(int(idx.train.size) for idx in indices.values())
        base = dataclasses.replace(base, batch_size=min(spec.BATCH_SIZE, smallest))
        grid = dataclasses.replace(grid, base=base)
        if smallest < spec.BATCH_SIZE:
            logging.info("batch size %d: the training set has %d images (fewer than %d; "
                         "--batch_size sets another)", base.batch_size, smallest,
                         spec.BATCH_SIZE)  # fmt: skip
    for normal, idx in indices.items():
        warning = threshold_warning(int(idx.val.size), percentile=base.threshold_percentile)
        if warning:
            logging.warning("%s: %s", _name(base, normal), warning)
        if set(base.models) - set(vocab.BASELINES):
            with as_flags(f" ({_name(base, normal)})"):
                train.check_args(idx.train.size, batch_size=base.batch_size, epochs=base.epochs)
        splits[str(normal)] = {
            "train": int(idx.train.size), "val": int(idx.val.size), "test": int(idx.test.size),
            "test_anomalies": int((dataset.test_labels[idx.test] != normal).sum()),
            "fingerprint": idx.fingerprint,
        }  # fmt: skip
    return grid, splits, indices


def _check_same_splits(saved: dict[str, Any], splits: dict[str, Any], run_dir: str) -> None:
    for normal, split in splits.items():
        old = saved.get("splits", {}).get(normal, {}).get("fingerprint")
        if old is not None and old != split["fingerprint"]:
            raise ConfigError(
                f"class {normal}: the training and held-out images differ from those of the "
                f"run in {run_dir} (split fingerprint {split['fingerprint']}, saved {old}); "
                "use the run's data source and files"
            )


def run(
    grid: SweepConfig, *, kind: str = "run", resume: bool = False, eval_only: bool = False,
    timings: Timings | None = None, dataset: Callable[[], data.Dataset] | None = None,
) -> Result:
    """Trains (or restores) and evaluates every model of the grid.

    Args:
      grid: The grid; a single run is ``SweepConfig.single(config)``.
      kind: ``run``, ``sweep`` or ``baselines``: how the output folder is named.
      resume: Continue the interrupted run in ``grid.base.output_dir`` from its
        checkpoints; the result equals an uninterrupted run's.
      eval_only: Re-score the final checkpoints of the run in
        ``grid.base.output_dir``; results go to a new folder inside it.
      timings: Where to add the seconds of each phase (data, compile, train,
        checkpoints, scoring ...); a new one when None.
      dataset: Returns the grid's dataset, e.g. one loading in the background
        (:func:`jax_vae.data.load_dataset_early`); None loads it here.

    Returns:
      The records, ready for :func:`experiments.report.write`.

    Raises:
      ConfigError: A bad setting, checked before any training.
      DataError, CheckpointError, NonFiniteLossError: As the library.
      Interrupted: Ctrl-C during training.
    """
    base, timings = grid.base, timings or Timings()
    rules.choice("kind", kind, KINDS)
    run_dir = base.output_dir
    validate_sweep(dataclasses.replace(grid, base=dataclasses.replace(base, output_dir=None)))
    saved: dict[str, Any] = {}
    if resume or eval_only:
        saved = read_record(run_dir, flag="resume" if resume else "eval_only")
        done = runs.completion_file(kind)
        if resume and runs.is_complete(run_dir, kind):
            hint = f"use --eval_only={run_dir} to re-score it" if kind == "run" else "nothing to do"
            raise ConfigError(f"the {kind} in {run_dir} is complete ({done} exists); {hint}")
    if eval_only:
        label = f"p{base.threshold_percentile:g}"
        if base.anomaly_fraction is not None:
            label += f"_af{base.anomaly_fraction:g}"
        if base.score_smoothing:
            label += f"_s{base.score_smoothing:g}"
        if base.score != "residual":
            label += f"_{base.score}"
        output_dir = runs.new_run_dir(f"eval_{label}", root=run_dir)
    else:
        output_dir = run_dir or default_output_dir(kind, grid)
    writer = sharding.is_main_process()  # Multi-host: only process 0 writes files.
    created = writer and not resume and not os.path.exists(output_dir)
    if writer and not resume:
        prepare_output_dir(output_dir)  # Before the data: an unwritable folder fails now.
    try:
        with timings.phase("data"):
            dataset = dataset() if dataset else data.load_dataset(base.data_source,
                                                                  **data_options(base))
            grid, splits, indices = _check_splits(dataset, grid)
            base = grid.base
        if saved:
            _check_same_splits(saved, splits, run_dir)
        mesh = config_mesh(base, grid.mesh_layout)
        record = {
            **({} if kind == "run" else {
                k: v for k, v in dataclasses.asdict(grid).items() if k != "base"}),
            **{k: v for k, v in dataclasses.asdict(base).items()
               if kind == "run" or k not in ("beta", "seed", "normal_class", "score_smoothing",
                                             "score", "hparams")},
            "output_dir": output_dir, **({"evaluated_run": run_dir} if eval_only else {}),
            **environment_record(), "splits": splits,
            "image_shape": list(dataset.image_shape),
            **({"test_kinds": list(dataset.class_names)} if dataset.class_names else {}),
        }  # fmt: skip
        if writer and not resume:
            try:
                runs.claim(output_dir, record)
            except runs.RunFolderError as e:
                raise ConfigError(f"--output_dir {e}") from None
        board = Board(runs.tensorboard_dir(output_dir) if writer and base.tensorboard
                      else None, resume=resume)  # fmt: skip
    except BaseException:
        if created and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)  # Nothing was written: leave no empty folder behind.
        raise
    logging.info("%s folder %s", kind, output_dir)

    result = Result(kind, grid, output_dir, record, [], [], {}, board.root, timings)
    try:  # The board's one owner: its writers close here, whatever happens.
        _run_classes(result, dataset, indices, mesh=mesh, board=board, run_dir=run_dir,
                     eval_only=eval_only)  # fmt: skip
        with timings.phase("tensorboard"):
            board.finals(base, result.rows, tuple(grid.hparams))
    finally:
        board.close()
    return result


def _run_classes(result: Result, dataset, indices, *, mesh, board, run_dir, eval_only) -> None:
    """Every class and model of the grid: trained (or restored, or fitted), scored, rows."""
    grid, kind, timings, output_dir = result.grid, result.kind, result.timings, result.output_dir
    base = grid.base
    checkpointers: list[Checkpointer] = []  # Closed at the end, with their time.
    # Several classes: each training set padded (masked) to one size, so that one compiled
    # epoch per model kind trains them all, with the numbers each trains to alone.
    sizes = [indices[normal].train.size for normal in grid.classes]
    pad_to = train.padded_sizes(sizes) if len(sizes) > 1 else {}
    # One model and optimizer object per kind, for every class: the epoch program is reused.
    models = {name: config_model(base, name, dataset.image_shape) for name in base.models
              if name not in vocab.BASELINES}  # fmt: skip
    with as_flags():  # Every score fits every model (a latent code where one needs it).
        for model in models.values():
            model_scorer(model, grid)
    # Adam. One learning rate: a constant, as the seed spec (bit for bit as it always was).
    # Several: injected, so that each model reads its own (a vmapped axis; see _hparams).
    tx = train.adam(grid.rates[0], injected=len(grid.rates) > 1)
    others = _validation_sample(dataset, grid)
    try:
        for normal in grid.classes:
            with timings.phase("data"):
                split = data.take_split(dataset, indices[normal], normal)
                synthetic = data.synthetic_anomalies(split.val_images, seed=base.split_seed,
                                                     image_shape=dataset.image_shape)  # fmt: skip
            images = scoring.Parts(split.val_images, split.test_images, synthetic)
            for name in base.models:
                if name in vocab.BASELINES:
                    with timings.phase("baselines"):
                        group, timing = _fit_baselines(grid, normal, name, split, images)
                else:
                    model = models[name]
                    checkpointer = None
                    if base.checkpoint_every or eval_only:
                        checkpointer = Checkpointer(
                            runs.checkpoint_dir(run_dir or output_dir,
                                                runs.model_slug(base.dataset, normal, name)),
                            every=max(base.checkpoint_every, 1))  # fmt: skip
                        checkpointers.append(checkpointer)
                    group, timing = (_restore if eval_only else _train)(
                        grid, normal, model, split, tx=tx, mesh=mesh, checkpointer=checkpointer,
                        board=board, timings=timings, pad_to=pad_to.get(len(split.train_images)),
                    )  # fmt: skip
                    with timings.phase("scoring"):
                        group = _score(group, grid, images, split.train_images,
                                       keep_params=kind == "run",
                                       others=others and tuple(a[others[1] != normal]
                                                               for a in others))  # fmt: skip
                result.groups.append(group)
                with timings.phase("metrics"):
                    result.rows.extend(_rows(group, grid, split, timing, dataset.class_names))
            if kind == "run":
                result.splits[normal] = split
                with timings.phase("previews"):
                    result.previews = _previews(grid, split, result.groups, dataset)
    finally:  # Also on an error: Orbax's threads must end before the interpreter does.
        for checkpointer in checkpointers:
            checkpointer.close()
            timings.add("checkpoints", checkpointer.save_seconds)


def _validation_sample(dataset: data.Dataset, grid: SweepConfig) -> tuple | None:
    """``validation_images`` training images of each class (the same for every task and
    seed: drawn by the split seed), and their classes; None when the grid asks for none."""
    if not grid.validation_images:
        return None
    rng = np.random.default_rng(grid.base.split_seed)
    picks = np.concatenate([
        np.sort(rng.choice(np.flatnonzero(dataset.train_labels == k),
                           size=min(grid.validation_images,
                                    int((dataset.train_labels == k).sum())), replace=False))
        for k in np.unique(dataset.train_labels)
    ])  # fmt: skip
    return dataset.train_images[picks], dataset.train_labels[picks]


def _previews(grid: SweepConfig, split: data.OneClassSplit, groups: list[Group],
              dataset: data.Dataset):  # fmt: skip
    """A single run's test images, their reconstructions and latent codes, for the plots
    (without test images, as a folder without test/: the held-out normals)."""
    models = [g for g in groups if g.params is not None]
    if not models:  # Baselines only: nothing to reconstruct.
        return None
    images, labels, classes = split.test_images, split.test_labels, split.test_classes
    if not labels.size:
        images, classes = split.val_images, np.zeros(len(split.val_images), np.int32)
        labels = classes
    rng = np.random.default_rng(grid.base.split_seed)
    picks = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), size=min(GRID_IMAGES, int((labels == c).sum())),
                   replace=False)
        for c in (0, 1)
    ])  # fmt: skip
    inputs = images[picks]
    reconstructions = {
        g.name: np.asarray(jax.jit(jax.vmap(g.model.reconstruct(), in_axes=(None, 0)))(
            g.params, inputs))
        for g in models
    }  # fmt: skip
    names = dataset.class_names or vocab.CLASS_NAMES[grid.base.dataset]
    titles = [f"{names[c]}{' (A)' if a else ''}" for c, a in zip(classes[picks], labels[picks],
                                                                 strict=True)]  # fmt: skip
    codes = code_classes = None
    # The latent plot: the VAE's posterior means, or else the first model with a code.
    coded = sorted((g for g in models if g.model.spec.encode), key=lambda g: g.name != "vae")
    if coded:
        encode = coded[0].model.spec.encode(coded[0].model.module)
        subset = rng.permutation(labels.size)[:LATENT_POINTS]
        codes = scoring.map_chunked(lambda p, x, k: encode(p, x), coded[0].params,
                                    images[subset], chunk_size=grid.base.chunk_size)
        code_classes = classes[subset]
    labels_ = dataset.class_names or tuple(vocab.class_label(grid.base.dataset, i)
                                           for i in range(len(names)))  # "digit 3" in legends.
    return Previews(inputs, titles, dataset.image_shape, reconstructions, codes, code_classes,
                    labels_)


def variants(grid: SweepConfig, image_shape: tuple | None = None) -> list[tuple[str, float]]:
    """The (score, smoothing) pairs every trained model is scored with, in column order; for
    a model of images of ``image_shape``, with the one score's ``--score_alternatives`` after
    it where the images are larger than the benchmarks' (:func:`jax_vae.health.
    score_candidates`; each model keeps one of them: :func:`_choose`)."""
    pairs = [(score, smoothing) for score in grid.scores for smoothing in grid.smoothings]
    if image_shape is None or not grid.base.score_alternatives:
        return pairs
    ((score, smoothing),) = pairs  # validate_sweep: one score and one smoothing.
    return [(name, smoothing) for name in
            health.score_candidates(image_shape, score, grid.base.score_alternatives)]


def _rows(group: Group, grid: SweepConfig, split: data.OneClassSplit, timing: dict,
          kinds: tuple[str, ...] = ()) -> list[dict]:  # fmt: skip
    """One record per (point, score, smoothing): identity, metrics (with ``kinds``, the names
    of a folder's test labels, the AUROC of each kind of anomaly), timing, history."""
    columns = variants(grid) if group.history is not None else [(None, None)]
    rows, labels = [], split.test_labels
    findings = _health(group, grid, split.train_images)
    for s, (score_name, smoothing) in enumerate(columns):
        for p, point in enumerate(group.points):
            choice = {} if group.choices is None else {"score_choice": group.choices[p]}
            scores = [part[p, :, s] for part in group.scores]
            per_kind = {kind: separation_auroc(scores[1][split.test_classes == 0],
                                               scores[1][split.test_classes == k])
                        for k, kind in enumerate(kinds) if k and labels.size}  # fmt: skip
            validation = {} if group.validation is None else {"validation": {
                int(k): separation_auroc(scores[0], group.validation[p, group.validation_classes
                                                                     == k, s])
                for k in np.unique(group.validation_classes)}}  # fmt: skip
            rows.append({
                "model": group.name, **point, "normal_class": group.normal,
                "smoothing": smoothing, "score": choice["score_choice"]["score"] if choice
                else score_name, **choice,
                **evaluate(labels, *scores, percentile=grid.base.threshold_percentile),
                **({"kinds": per_kind} if per_kind else {}), **validation,
                **timing,
                **({} if group.history is None else
                   {"history": {k: [float(v) for v in h[p]] for k, h in group.history.items()},
                    "health": findings[p]}),
            })  # fmt: skip
    return rows


def _health(group: Group, grid: SweepConfig, train_images: np.ndarray) -> list[list[str]]:
    """Each trained point's training-health findings (:func:`jax_vae.health.check`), each
    logged once as a warning naming the model; [] for a baseline's points."""
    if group.history is None:
        return [[] for _ in group.points]
    baseline = health.baseline_loss(train_images, likelihood=grid.base.likelihood)
    texts = []
    for p, point in enumerate(group.points):
        found = health.check({k: h[p] for k, h in group.history.items()}, baseline=baseline)
        texts.append([f.text for f in found])
        name = _label(grid, group.normal, group.name)
        if len(group.points) > 1:  # Which model of the kind: its axes and seed.
            name += "".join(f" {a}={v:g}" for a, v in point.items() if v is not None)
        for finding in found:
            logging.warning("%s", finding.message(name))
    return texts


def _fit_baselines(grid, normal, name, split, images) -> tuple[Group, dict]:
    """A scikit-learn baseline per seed, scored like the models (one 'smoothing')."""
    from jax_vae.baselines import fit_baseline  # noqa: PLC0415  (scikit-learn: only here)

    points = points_of(grid, name)
    t = time.perf_counter()
    parts: list[list[np.ndarray]] = [[], [], []]
    for seed in (p["seed"] for p in points):
        logging.info("%s: fitting %s (seed %d) on %d images", _name(grid.base, normal), name,
                     seed, len(split.train_images))  # fmt: skip
        scorer = fit_baseline(name, split.train_images, seed=seed)
        for i, part in enumerate(images):
            parts[i].append(scorer(part)[:, None])
    timing = {"train_seconds": time.perf_counter() - t}
    return Group(normal, name, points, scoring.Parts(*map(np.stack, parts)), None), timing


def _keys(grid: SweepConfig, name: str, points: list[dict]) -> keys.ModelKeys:
    """The training and scoring keys of every model of one kind: [points * members]."""
    members = [keys.member_keys(p["seed"], name, grid.base.ensemble_size) for p in points]
    return keys.ModelKeys(*(jnp.concatenate(k) for k in zip(*members, strict=True)))


def _hparams(grid: SweepConfig, model: registry.Model, points: list[dict], mesh) -> tuple:
    """The per-model hyperparameters [points * members (+ mesh padding)] of one model
    kind's points, and their training keys (one key, scalars for one model)."""
    base, members = grid.base, grid.base.ensemble_size
    train_keys = _keys(grid, model.name, points).train
    # Per model, the hyperparameters its loss reads: each point's value on a grid axis, else
    # the setting of that name (--kl_warmup_epochs), else the registry entry's default.
    hparams = {h: np.array([p[h] if p.get(h) is not None else
                            getattr(base, h) if h in SETTING_HPARAMS else default
                            for p in points], np.float32)
               for h, default in model.hparams.items()}  # fmt: skip
    if len(grid.rates) > 1:  # Injected into the optimizer (see _run_classes).
        hparams["learning_rate"] = np.array([p["learning_rate"] for p in points], np.float32)
    hparams = {h: np.repeat(v, members) for h, v in hparams.items()}
    if mesh is not None and grid.mesh_layout == sharding.MODELS:
        pad = -train_keys.shape[0] % mesh.devices.size  # Whole models per device: repeat.
        train_keys = jnp.concatenate([train_keys, jnp.repeat(train_keys[-1:], pad)])
        hparams = {h: np.concatenate([v, np.repeat(v[-1:], pad)]) for h, v in hparams.items()}
    if train_keys.shape[0] == 1:  # One model: trained unbatched, exactly as the library does.
        train_keys, hparams = train_keys[0], {h: v[0] for h, v in hparams.items()}
    return train_keys, hparams


def _restore(grid, normal, model, split, *, tx, mesh, checkpointer, **_) -> tuple[Group, dict]:
    """``--eval_only``: every point of one model kind from its final checkpoint."""
    base, points = grid.base, points_of(grid, model.name)
    latest = checkpointer.latest_epoch()
    if latest != base.epochs:
        raise ConfigError(
            f"{_label(grid, normal, model.name)} has no final checkpoint in "
            f"{checkpointer.directory} (latest: epoch {latest} of {base.epochs}); finish it "
            "with --resume first"
        )
    train_keys, hparams = _hparams(grid, model, points, mesh)
    init = train.make_train(model, tx=tx, batch_size=base.batch_size, epochs=base.epochs).init
    if jnp.ndim(train_keys):
        init = jax.vmap(init, in_axes=(0, None, 0))
    template = train.state_template(init, train_keys, split.train_images, hparams)
    state, history = checkpointer.restore(template)
    return Group(normal, model.name, points, None, train.stack_history(history), state.params,
                 model), {}  # fmt: skip


def _train(grid, normal, model, split, *, tx, mesh, checkpointer, board, timings, pad_to):
    """Trains every point of one model kind (times the ensemble members) together (padded
    to ``pad_to`` images: see :func:`jax_vae.train.train`)."""
    base, points, name = grid.base, points_of(grid, model.name), model.name
    train_keys, hparams = _hparams(grid, model, points, mesh)
    k, label = len(points) * base.ensemble_size, _label(grid, normal, name)
    logging.info("%s: training %d %s model%s together (%d epochs, %d images)", _name(base, normal),
                 k, name, "" if k == 1 else "s", base.epochs, len(split.train_images))  # fmt: skip
    last = [0]  # The last finished epoch, for the message on Ctrl-C.
    runs = [[run_name(base, {"normal_class": normal, "model": name, **p, "smoothing": sm,
                             "score": sc}, len(grid.smoothings) > 1, len(grid.rates) > 1,
                      tuple(grid.hparams))
             for sc, sm in variants(grid)] for p in points]  # fmt: skip
    curves = board.epoch_hook(runs, members=base.ensemble_size, images=len(split.train_images),
                              betas=[p["beta"] for p in points],
                              warmup=[base.kl_warmup_epochs if p.get("kl_warmup_epochs") is None
                                      else p["kl_warmup_epochs"] for p in points])  # fmt: skip
    try:
        trained = train.train(
            train_keys, split.train_images, hparams, model=model, tx=tx, epochs=base.epochs,
            batch_size=base.batch_size, name=label, group_size=grid.group_size, mesh=mesh,
            hooks=(train.log_progress, lambda e: last.__setitem__(0, e.epoch), curves),
            checkpointer=checkpointer, pad_to=pad_to,
        )  # fmt: skip
    except KeyboardInterrupt:
        # Ctrl-C may land inside a save: what is complete on disk is what resumes.
        saved = checkpointer.latest_epoch(reload=True) if checkpointer else None
        where = os.path.dirname(os.path.dirname(checkpointer.directory)) if checkpointer else ""
        raise Interrupted(
            f"interrupted in epoch {last[0] + 1}/{base.epochs} of {label}; "
            + (f"continue from epoch {saved} with --resume={where}" if saved else
               "no checkpoint to resume from yet")
        ) from None
    timings.add("compile", trained.compile_seconds)
    timings.add("train", trained.train_seconds)
    timing = {
        "train_seconds": trained.train_seconds, "compile_seconds": trained.compile_seconds,
        "images_per_second": trained.epochs_run * k * len(split.train_images)
        / trained.train_seconds if trained.epochs_run else None,
        "microbatches": trained.microbatches,
    }  # fmt: skip
    return Group(normal, name, points, None, trained.history, trained.params, model), timing


def model_scorer(model: registry.Model, grid: SweepConfig) -> scores.Scorer:
    """The scorer of one model kind for the grid's columns (:func:`variants`)."""
    base = grid.base
    return scores.scorer(model, variants(grid, model.module.image_shape),
                         vae_score=base.vae_score,
                         mc_samples=base.mc_samples, likelihood=base.likelihood)  # fmt: skip


def _score(group: Group, grid: SweepConfig, images: scoring.Parts, train_images: np.ndarray, *,
           keep_params: bool, others: tuple | None = None) -> Group:  # fmt: skip
    """Scores every trained model of a group every way of the grid (:func:`variants`): each
    score fit on the training split and, a fusion, on the held-out normals
    (:class:`jax_vae.scores.Scorer`); averages ensemble members."""
    base, points, members = grid.base, group.points, grid.base.ensemble_size
    k = len(points) * members
    params, history = sharding.on_one_device((group.params, group.history))  # One device.
    if jnp.ndim(jax.tree.leaves(history)[0]) == 1:  # One model: its leading axis back.
        params, history = jax.tree.map(lambda a: a[None], (params, history))
    params = jax.tree.map(lambda a: a[:k], params)  # Drop the mesh padding.
    history = {f: np.asarray(h[:k]).reshape(len(points), members, -1).mean(axis=1)
               for f, h in history.items()}  # fmt: skip
    one = params if k > 1 else jax.tree.map(lambda a: a[0], params)
    scorer = model_scorer(group.model, grid)
    score_keys = _keys(grid, group.name, points).score
    fitted = scorer.fit(one, train_images, key=score_keys if k > 1 else score_keys[0],
                        chunk_size=base.chunk_size, stacked=k > 1)  # fmt: skip
    components = scoring.score_parts(
        scorer.inputs(one, fitted), images, score_fn=scorer.fn,
        key=score_keys if k > 1 else score_keys[0], chunk_size=base.chunk_size, stacked=k > 1,
    )  # fmt: skip
    stats = scorer.standardize(components.val)  # A fusion's, on the held-out normals.

    def columns_of(c):  # Each model's columns, [points * members, N, V] -> [points, N, V].
        v = scorer.combine(c, stats)
        return np.reshape(v, (len(points), members, *v.shape[-2:])).mean(axis=1)

    columns = scoring.Parts(*map(columns_of, components))
    validation = None
    if others:  # Other classes' training images: the validation tasks' anomalies.
        key = score_keys if k > 1 else score_keys[0]
        validation = columns_of(scoring.map_chunked(
            scorer.fn, scorer.inputs(one, fitted), others[0],
            key=jax.vmap(keys.validation_key)(key) if k > 1 else keys.validation_key(key),
            chunk_size=base.chunk_size, stacked=k > 1))  # fmt: skip
    choices = None
    names = [name for name, _ in variants(grid, group.model.module.image_shape)]
    if len(names) > len(variants(grid)):  # --score_alternatives added some: one each.
        columns, validation, choices = _choose(columns, validation, names)
        for point, choice in zip(points, choices, strict=True):
            name = _label(grid, group.normal, group.name) + (
                f" seed={point['seed']}" if len(points) > 1 else "")  # fmt: skip
            logging.info("%s: scored by %s: %s", name, choice["score"], choice["why"])
    first = jax.tree.map(lambda a: a[0], params) if keep_params else None
    kept = (jax.tree.map(np.asarray, fitted), stats) if keep_params and k == 1 else None
    return dataclasses.replace(group, scores=columns, history=history, params=first,
                               fitted=kept, validation=validation, choices=choices,
                               validation_classes=others[1] if others else None)  # fmt: skip


def _choose(columns: scoring.Parts, validation: np.ndarray | None,
            names: list[str]) -> tuple[scoring.Parts, np.ndarray | None, list[dict]]:  # fmt: skip
    """Each point's score of its candidates (the columns, named ``names``), from the held-out
    normals and their synthetic corruptions alone (:func:`jax_vae.health.choose_score`);
    the columns [points, images, candidates] cut to each point's chosen one."""
    choices = [health.score_choice(names, columns.val[p], columns.synthetic[p])
               for p in range(columns.val.shape[0])]  # fmt: skip
    index = np.asarray([names.index(c["score"]) for c in choices])[:, None, None]

    def take(a):
        return np.take_along_axis(np.asarray(a), index, axis=2)

    return (scoring.Parts(*map(take, columns)),
            None if validation is None else take(validation), choices)  # fmt: skip


def _label(grid: SweepConfig, normal: int, name: str) -> str:
    """A model kind in log lines and messages: ``vae``, or ``vae (digit 3)`` in a grid."""
    return f"{name} ({_name(grid.base, normal)})" if len(grid.classes) > 1 else name
