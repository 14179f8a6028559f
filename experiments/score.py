"""Score new images with a finished run (or a saved detector): each model's score and flag,
one row per image.

  python -m experiments.score --run=runs/<run> --images=new_images/          # a folder
  python -m experiments.score --run=runs/<run> --images=a.png,b.png --maps=2 # + anomaly maps
  python -m experiments.score --run=runs/<run> --images=batch.npy            # an array file

Writes ``scores.csv`` (file, its kind, then per model its score and whether it is above the
run's threshold) into a new folder (default ``<run>/<time>_score``) and prints how many images
each model flags. A folder is read at any depth; a file's kind is its first folder under the
given one (``good``, ``scratch``). Where the kinds include a normal one (``good``,
``normal``) and others, each model's AUROC and F1 on them are printed, and written with the
counts to ``summary.json``.

``--maps=N`` also writes, for each model's N highest-scoring images, the image, its
reconstruction and the anomaly map (the squared residual, blurred as the run's
``--score_smoothing`` scores it) as one PNG.

Image files of another size or channel count than the run's images are resized (bilinear)
and converted to them, as anomalib does, with a warning saying how many; an array file
(uint8, or floats in [0, 1]) must already have the run's shape: another is one error line.
"""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np
from absl import flags, logging

from experiments import cli
from experiments.config import ConfigError, check_output_dir, prepare_output_dir
from jax_vae import rules, runs, vocab
from jax_vae.runs import atomic_write_bytes

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined when it runs, so that :func:`score` imports without them
    (another command's ``--models`` may be defined in the same process)."""
    flags.DEFINE_string("run", None, "The finished run (experiments.main) whose models score, "
                        "or a saved detector (jax_vae.detector.Detector.save).")  # fmt: skip
    flags.DEFINE_string("images", None, "A folder of images, image files (a,b.png), or "
                        ".npy/.npz.")  # fmt: skip
    flags.DEFINE_list("models", None, "Models of the run to score with (default: all of them).")
    flags.DEFINE_integer("maps", 0, "Anomaly maps of each model's N highest-scoring images.")
    flags.DEFINE_string("output_dir", None, "New folder for the results (default: "
                        "<run>/<time>_score).")  # fmt: skip
    flags.adopt_module_key_flags(cli)


def _run_models(run: str) -> list[str]:
    """The trained models of a run (or of a saved ``Detector``); the flag checks, before JAX
    starts."""
    try:
        config = runs.read_config(run)
        kind = runs.kind_of(config)
        if kind == "detector":  # Detector.save: its one model, its threshold inside.
            return [config["detector"]["model"]]
        if kind == "grid":
            raise ConfigError(f"--run {run} holds a sweep or baselines run; give a single run")
        runs.read_completion(run)
    except runs.RunFolderError:
        raise ConfigError(f"--run {run}: not a finished run of experiments.main (it needs "
                          "config.json and metrics.json) or a saved detector") from None
    return [m for m in config.get("models", ()) if m not in vocab.BASELINES]


def body():
    if not FLAGS.run or not FLAGS.images:
        raise ConfigError("give --run=<a finished run's folder> and --images=<what to score>")
    trained = _run_models(FLAGS.run)
    models = tuple(FLAGS.models or trained)
    rules.choices("--models", models, trained)
    rules.at_least("--maps", FLAGS.maps, 0)
    output = FLAGS.output_dir or runs.new_run_dir("score", root=FLAGS.run)
    check_output_dir(output)
    return lambda timings: score(FLAGS.run, FLAGS.images, models, output, maps=FLAGS.maps)


def score(run: str, source: str, models: tuple[str, ...], output: str, *, maps: int = 0) -> dict:
    """Scores ``source`` with each model of ``run``; writes scores.csv (and maps) in ``output``.

    Returns:
      Per model, its threshold and how many images it flagged.
    """
    from jax_vae import data, metrics  # noqa: PLC0415  (after the flag checks)
    from jax_vae.detector import Detector  # noqa: PLC0415

    height, width, channels = runs.read_config(run).get("image_shape", (28, 28, 1))  # Older: MNIST.
    names, raw = data.read_images(source, channels=channels, size=(height, width), warn=True)
    shape = tuple(raw.shape[1:]) + (1,) * (raw.ndim == 3)
    if shape != (height, width, channels):
        raise ConfigError(f"--images are {'x'.join(map(str, shape))} (height x width x "
                          f"channels); the run's models take {height}x{width}x{channels}")
    images = data.as_images(raw)
    prepare_output_dir(output)
    detectors = {m: Detector.load(run, model=m) for m in models}
    scores = {}
    for m, d in detectors.items():  # One compiled call per model: a line before each.
        for line in d.health:  # What the run found about its training, said again here.
            logging.warning("the run's %s", line)
        logging.info("scoring %d images with %s (%s)", len(images), m, d.settings["score"])
        scores[m] = d.score(images)
    flags_ = {m: (scores[m] > d.threshold).astype(int) for m, d in detectors.items()}
    kinds = [kind_of(name) for name in names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "kind", *(f"{m}_{c}" for m in models for c in ("score", "flagged"))])
    for i, name in enumerate(names):
        writer.writerow([name, kinds[i], *(v for m in models
                                           for v in (f"{scores[m][i]:.6g}", flags_[m][i]))])
    atomic_write_bytes(os.path.join(output, "scores.csv"), buffer.getvalue().encode())
    labels = _labels(kinds)
    summary = {}
    for m, d in detectors.items():
        summary[m] = {"threshold": d.threshold, "flagged": int(flags_[m].sum())}
        sys.stdout.write(f"{m}: {summary[m]['flagged']} of {len(names)} images flagged "
                         f"(score > {d.threshold:.5g})\n")  # fmt: skip
        if labels is not None:  # Normal and anomalous kinds: how well the model tells them.
            known = labels >= 0
            found = metrics.detection_metrics(labels[known], scores[m][known],
                                              threshold=d.threshold)._asdict()  # fmt: skip
            summary[m].update(found, images=int(known.sum()))
            sys.stdout.write(f"{m}: AUROC {found['auroc']:.4f}, F1 {found['f1']:.4f} "
                             f"(precision {found['precision']:.4f}, recall "
                             f"{found['recall']:.4f}) on {int(known.sum())} images of "
                             f"{', '.join(sorted(set(k for k in kinds if k)))}\n")  # fmt: skip
        if maps:
            _maps(d, images, names, scores[m], maps, output)
    runs.write_json(os.path.join(output, "summary.json"), summary)
    logging.info("scores in %s", output)
    return summary


def kind_of(name: str) -> str:
    """The kind of a scored file: the first folder of its path under the scored folder
    (``scratch/003.png`` -> ``scratch``); empty for a file at its top or given by name."""
    head, sep, _ = name.partition("/")
    return head if sep else ""


def _labels(kinds: list[str]) -> np.ndarray | None:
    """Per image 0 (a normal kind: ``good``, ``normal``), 1 (any other kind) or -1 (no kind);
    None unless there are both normal and anomalous kinds."""
    from jax_vae.data import NORMAL_FOLDERS  # noqa: PLC0415

    labels = np.array([-1 if not k else int(k.lower() not in NORMAL_FOLDERS) for k in kinds])
    return labels if {0, 1} <= set(labels.tolist()) else None


def _maps(detector, images: np.ndarray, names: list[str], scores: np.ndarray, n: int,
          output: str) -> None:  # fmt: skip
    """The image, its reconstruction and its anomaly map, for the n highest scores."""
    import jax  # noqa: PLC0415

    from experiments import plots  # noqa: PLC0415
    from jax_vae import scoring  # noqa: PLC0415

    top = np.argsort(-scores, kind="stable")[:n]
    x, shape = images[top], tuple(detector.model.module.image_shape)
    recon = jax.vmap(detector.model.reconstruct(), in_axes=(None, 0))(detector.params, x)
    # The squared residual, blurred as the run's score blurs it.
    maps = jax.vmap(scoring.anomaly_map(detector.settings["score_smoothing"], shape))(x, recon)
    name = detector.model.name

    def picture(a):  # [H, W] for one channel, [H, W, C] otherwise (what imshow takes).
        a = np.asarray(a).reshape(shape)
        return a[..., 0] if shape[2] == 1 else a

    for rank, (i, image, r, heat) in enumerate(zip(top, x, recon, maps, strict=True)):
        figure = plots.anomaly_map(picture(image), picture(r), np.asarray(heat).sum(-1),
                                   f"{names[i]}: {name} score {scores[i]:.4g}")  # fmt: skip
        plots.save(figure, os.path.join(output, f"map_{name}_{rank + 1:03d}.png"))


if __name__ == "__main__":
    define_flags()
    cli.command(body)
