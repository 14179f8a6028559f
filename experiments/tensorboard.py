"""TensorBoard event files for every run, sweep and baselines run (tensorboardX: no TensorFlow).

Under ``<output_dir>/tensorboard/`` each model of the grid is one TensorBoard run,
``<class>/<model>[_b<beta>]_seed<seed>[_smooth<s>]``, holding its per-epoch
training scalars (``train/*``), its final metrics (``final/*``, at the last
epoch) and its hyperparameters (the HParams plugin: one comparable row per
model); a single run's plots go to the run ``plots`` as images. Only process 0
writes. A resumed run purges the steps after its checkpoint, so its curves go on
without duplicates; ``--eval_only`` writes into its own folder.

  tensorboard --logdir runs/            # every run and sweep below runs/
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import numpy as np
from absl import logging

FINAL_TAGS = (
    "auroc", "auprc", "f1", "precision", "recall", "fpr", "threshold", "synthetic_auroc",
)  # fmt: skip
HPARAMS = (
    "dataset", "latent_dim", "hidden_dims", "epochs", "batch_size",
    "split_seed", "vae_score", "likelihood", "kl_warmup_epochs", "ensemble_size",
    "architecture",
)  # fmt: skip


def run_name(base, row: dict[str, Any], smoothed: bool, rated: bool = False,
             axes: tuple[str, ...] = ()) -> str:
    """The TensorBoard run of one grid row (its learning rate too when the grid has several;
    its value on each of the models' own ``axes``, ``_noise0.1``, where it has one)."""
    from jax_vae.vocab import class_slug  # noqa: PLC0415

    name = f"{class_slug(base.dataset, row['normal_class'])}/{row['model']}"
    if row["beta"] is not None:
        name += f"_b{row['beta']:g}"
    if rated and row.get("learning_rate") is not None:
        name += f"_lr{row['learning_rate']:g}"
    name += "".join(f"_{a}{row[a]:g}" for a in axes if row.get(a) is not None)
    name += f"_seed{row['seed']}"
    if smoothed and row.get("smoothing") is not None:
        name += f"_smooth{row['smoothing']:g}"
    if row.get("score") not in (None, "residual"):
        name += f"_{row['score']}"
    return name


class Board:
    """Writers of one output folder's TensorBoard runs; a no-op when disabled.

    Args:
      root: ``<output_dir>/tensorboard``, or None for no events (another
        process, ``--notensorboard``).
      resume: The run continues an interrupted one: each run's first event
        purges what the interrupted run wrote from that step on.
    """

    def __init__(self, root: str | None, *, resume: bool = False):
        self.root, self.resume, self.writers = root, resume, {}
        if root is None:
            return
        try:
            import tensorboardX  # noqa: F401, PLC0415
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard events "
                            "(pip install tensorboardX)")  # fmt: skip
            self.root = None
            return
        try:  # Now, before training: a folder that cannot be made fails here, in one line.
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            from experiments.config import ConfigError  # noqa: PLC0415

            raise ConfigError(f"cannot write TensorBoard events to {root} ({e.strerror or e}); "
                              "fix the folder or pass --notensorboard") from None

    def writer(self, run: str, step: int):
        """The writer of ``run``, created at its first event (``step``)."""
        if run not in self.writers:
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            # tensorboardX names an event file after the second it opens it: a writer of the
            # same run in the same second (a resume, an evaluation) would truncate the first
            # writer's file. A suffix of its own per writer, in the order the writers open
            # (TensorBoard reads a run's files in name order), keeps every file.
            self.writers[run] = SummaryWriter(
                os.path.join(self.root, run), purge_step=step if self.resume else None,
                flush_secs=10, filename_suffix=f".{time.time_ns():020d}.{os.getpid()}",
            )  # fmt: skip
        return self.writers[run]

    def epoch_hook(self, runs: list[list[str]], *, members: int, images: int, betas, warmup):
        """A training hook writing each model's epoch scalars to its runs.

        Args:
          runs: Per grid point, the runs it is reported in (one per smoothing).
          members: Ensemble members per point (their means are averaged).
          images: Training images per epoch and model.
          betas: Per point, its beta (None for the AE).
          warmup: KL warm-up epochs, one for all or per point (the written beta follows
            the ramp).
        """
        if self.root is None:
            return lambda e: None
        from jax_vae.losses import warmed_beta  # noqa: PLC0415

        def hook(e) -> None:
            points = len(runs)
            means = {t: np.reshape(np.asarray(v, np.float64).ravel()[: points * members],
                                   (points, members)).mean(axis=1)
                     for t, v in e.means.items()}  # fmt: skip  (the loss terms as they come)
            # The KL weight training used this epoch, every point's in one call.
            beta = np.asarray(warmed_beta(np.array([b or 0.0 for b in betas], np.float32),
                                          e.epoch, np.asarray(warmup, np.float32)))  # fmt: skip
            for p, point_runs in enumerate(runs):
                scalars = {f"train/{t}": m[p] for t, m in means.items()}
                scalars["train/epoch_seconds"] = e.seconds
                scalars["train/images_per_second"] = images * points * members / e.seconds
                if betas[p] is not None:
                    scalars["train/beta"] = beta[p]
                for run in point_runs:
                    w = self.writer(run, e.epoch)
                    for tag, value in scalars.items():
                        w.add_scalar(tag, float(value), e.epoch)

        return hook

    def finals(self, base, rows: list[dict[str, Any]], axes: tuple[str, ...] = ()) -> None:
        """Each row's final metrics (at its last epoch) and hyperparameters (HParams; the
        models' own ``axes`` among them)."""
        if self.root is None:
            return
        from tensorboardX.summary import hparams  # noqa: PLC0415

        from jax_vae.vocab import class_label  # noqa: PLC0415

        smoothed = len({r.get("smoothing") for r in rows}) > 1
        rated = len({r.get("learning_rate") for r in rows} - {None}) > 1
        for row in rows:
            # A score chosen after training (--score_alternatives): the run its curves are in.
            named = {**row, "score": base.score} if "score_choice" in row else row
            w = self.writer(run_name(base, named, smoothed, rated, axes), base.epochs)
            # Without test images (a folder without test/) only what the held-out normals give.
            metrics = {f"final/{t}": float(row[t]) for t in FINAL_TAGS if row[t] is not None}
            for tag, value in metrics.items():
                w.add_scalar(tag, value, base.epochs)
            values = {
                "model": row["model"], "class": class_label(base.dataset, row["normal_class"]),
                # The AE has no KL term: beta 0 in the HParams table.
                "beta": float(row["beta"] or 0.0), "seed": int(row["seed"]),
                "learning_rate": float(row.get("learning_rate") or base.learning_rate),
                "smoothing": float(row.get("smoothing") or 0.0),
                **{k: _hparam(getattr(base, k)) for k in HPARAMS},
                **{a: float(row[a]) for a in axes if row.get(a) is not None},
            }  # fmt: skip
            # Session infos only: TensorBoard then builds the experiment from every run, knows
            # which hyperparameters differ between them and shows those first.
            _, session_start, session_end = hparams(values, metrics)
            w.file_writer.add_summary(session_start)
            w.file_writer.add_summary(session_end)

    def images(self, paths: dict[str, str], step: int) -> None:
        """PNG files as images of the run ``plots`` (stored as they are, not decoded)."""
        if self.root is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary  # noqa: PLC0415

        w = self.writer("plots", step)
        for tag, path in paths.items():
            with open(path, "rb") as f:
                png = f.read()
            width, height = struct.unpack(">II", png[16:24])  # The IHDR chunk.
            image = Summary.Image(height=height, width=width, colorspace=4,
                                  encoded_image_string=png)  # fmt: skip
            w.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _hparam(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else value
