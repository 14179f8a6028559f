"""The rules an argument must follow, shared by the library and the command line.

Each rule lives here once. The library calls it with its parameter's name
(``beta``), the command-line validation with the flag's (``--beta``), so the
same check gives a message that reads right in both places. This module imports
no JAX (and nothing heavy), so checking flags costs milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from jax_vae.errors import InvalidArgument  # noqa: F401  (re-exported: rules raise it)
from jax_vae.vocab import CLASS_NAMES, DATASETS, LOCAL_DATASETS, NUM_CLASSES

MAX_SMOOTHING = 10.0  # Pixels on a 28x28 image (scaled with the image's shorter side): a
# blur wider than that says nothing about where the image differs.
SEED_LIMIT = 2**32


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    note: str = "",
) -> None:
    """Checks that ``value`` is a finite number (an integer with ``integer``) in a range.

    Args:
      name: How the caller names the argument (``beta`` or ``--beta``).
      value: The value.
      low: Lower bound (inclusive unless ``low_open``); None: unbounded.
      high: Upper bound (inclusive unless ``high_open``); None: unbounded.
      low_open: Exclude ``low``.
      high_open: Exclude ``high``.
      integer: Require an ``int`` (``bool`` is not one).
      note: Appended to the message, e.g. what the value means.

    Raises:
      InvalidArgument: Naming ``name``, the allowed range and the value.
    """
    kind = "an integer" if integer else "a finite number"
    is_number = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not is_number or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be {kind}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo, hi = _bound(low), _bound(high)
        if high is None:
            bound = f"{'>' if low_open else '>='} {lo}"
        elif low is None:
            bound = f"{'<' if high_open else '<='} {hi}"
        else:
            bound = f"in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise InvalidArgument(f"{name} must be {bound}{note}, got {value}")


def _bound(value: float | None) -> str:
    """A bound as written in a message: integers in full (4294967296, not 4.29497e+09)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(name: str, value: Any, low: int, note: str = "") -> None:
    """An integer >= ``low``."""
    number(name, value, low=low, integer=True, note=note)


def choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgument(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def choices(name: str, values: Iterable[str], allowed: Iterable[str]) -> None:
    """At least one value, each one of ``allowed``, none twice."""
    values, allowed = tuple(values), tuple(allowed)
    if not values:
        raise InvalidArgument(f"{name} must name at least one of {', '.join(allowed)}")
    for value in values:
        choice(name, value, allowed)
    if len(set(values)) != len(values):
        raise InvalidArgument(f"{name} lists a value twice: {','.join(values)}")


def seed(name: str, value: Any) -> None:
    """A seed of ``jax.random.key`` and NumPy: an integer in [0, 2**32)."""
    number(name, value, low=0, high=SEED_LIMIT, high_open=True, integer=True)


def normal_class(name: str, value: Any) -> None:
    """The index of the normal class."""
    number(name, value, low=0, high=NUM_CLASSES - 1, integer=True)


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def class_index(name: str, value: str | int, dataset: str) -> int:
    """The index of a class given by index (``5``, ``"5"``) or name (``"Sandal"``, ``"ankle
    boot"``, ``"t-shirt"``: case, spaces and punctuation do not matter; a unique prefix will do).

    Raises:
      InvalidArgument: No class, or several, of ``dataset`` match.
    """
    choice("dataset", dataset, DATASETS + LOCAL_DATASETS)
    names = CLASS_NAMES[dataset]
    text = str(value).strip()
    if text.isdigit():
        number(name, int(text), low=0, high=len(names) - 1, integer=True)
        return int(text)
    matches = [i for i, n in enumerate(names) if _key(n).startswith(_key(text)) and _key(text)]
    exact = [i for i in matches if _key(names[i]) == _key(text)]
    if len(exact or matches) != 1:
        raise InvalidArgument(
            f"{name} must be a class index 0-{len(names) - 1} or one of {', '.join(names)} "
            f"({dataset}), got {value!r}"
        )
    return (exact or matches)[0]


def beta(name: str, value: Any) -> None:
    """A KL weight."""
    number(name, value, low=0)


def learning_rate(name: str, value: Any) -> None:
    """An optimizer step size."""
    number(name, value, low=0, low_open=True)


def fraction(name: str, value: Any) -> None:
    """A share strictly between 0 and 1."""
    number(name, value, low=0, high=1, low_open=True, high_open=True)


def percentile(name: str, value: Any) -> None:
    """A threshold percentile of held-out normal scores."""
    number(name, value, low=0, high=100, low_open=True)


def smoothing(name: str, value: Any, side: int | None = 28) -> None:
    """A Gaussian sigma in pixels; 0 means none; at most ``MAX_SMOOTHING`` per 28 pixels of
    the image's shorter ``side`` (None: not known yet, no upper bound)."""
    high = None if side is None else MAX_SMOOTHING * side / 28
    where = f" ({side}-pixel images)" if side not in (None, 28) else ""
    number(name, value, low=0, high=high, note=f" pixels{where}")


def smoothing_needs_reconstruction(name: str, value: float, vae_score: str) -> None:
    """Likelihood scores (ELBO, IWAE) have no residual to smooth."""
    if value and vae_score in ("elbo", "iwae"):
        raise InvalidArgument(
            f"{name} needs a reconstruction score (mean or mc), not vae_score={vae_score}"
        )


def conv_depth(name: str, hidden_dims: tuple[int, ...], height: int = 28, width: int = 28) -> None:
    """The conv models halve the (padded) image once per entry: at most down to one pixel."""
    if 2 ** len(hidden_dims) > min(height, width):
        deepest = max(1, min(height, width).bit_length() - 1)
        raise InvalidArgument(
            f"{name}: architecture conv halves {height}x{width} once per entry; give at most "
            f"{deepest} channel counts, got {list(hidden_dims)}"
        )


MAX_IMAGE_VALUES = 512 * 512 * 4  # A flat image's length: the MLP's first layer scales with it.


def image_shape(name: str, value: Any) -> None:
    """(height, width, channels): at least 2x2 pixels and one channel, at most
    ``MAX_IMAGE_VALUES`` values (bigger images are for downscaling first)."""
    if (not isinstance(value, tuple) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or min(value[:2]) < 2 or value[2] < 1):  # fmt: skip
        raise InvalidArgument(
            f"{name} must be (height, width, channels) with at least 2x2 pixels and one "
            f"channel, got {value!r}"
        )
    if value[0] * value[1] * value[2] > MAX_IMAGE_VALUES:
        raise InvalidArgument(
            f"{name} {value[0]}x{value[1]}x{value[2]} has more than {MAX_IMAGE_VALUES:,} "
            "values (e.g. 512x512x4); downscale the images first"
        )


def image_size(name: str, value: Any, channels: int = 1) -> None:
    """A size to resize images to: (height, width) within :func:`image_shape`'s bounds."""
    if len(value) != 2:
        raise InvalidArgument(f"{name} must be H,W (two integers), got {list(value)}")
    try:
        image_shape(name, (*value, channels))
    except InvalidArgument as e:  # Named as the user wrote it: H,W.
        raise InvalidArgument(str(e).replace(f"{name} must be (height, width, channels)",
                                             f"{name} must be H,W")) from None


def channels(name: str, value: Any) -> None:
    """Channels to convert images to: 0 (as the files are), 1 (grayscale) or 3 (RGB)."""
    if isinstance(value, bool) or value not in (0, 1, 3):
        raise InvalidArgument(f"{name} must be 1 (grayscale), 3 (RGB) or 0 (as the files "
                              f"are), got {value!r}")


def widths(name: str, value: Any) -> None:
    """A non-empty sequence of positive layer widths."""
    if not value or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in value):
        raise InvalidArgument(
            f"{name} must be a comma list of positive widths, got {list(value or [])}"
        )


def held_out(name: str, value: float, num_normal: int, what: str = "the normal class") -> int:
    """How many of ``num_normal`` images a hold-out share keeps back; at least one.

    Args:
      name: The share's name.
      value: The share, in (0, 1) (0 is allowed by the library when nothing
        needs holding out; pass it only where that is meant).
      num_normal: Normal training images.
      what: The class, for the message.

    Returns:
      ``round(value * num_normal)``, the held-out count.

    Raises:
      InvalidArgument: No image would be held out, or none left to train on;
        the message names the smallest (or largest) share that works.
    """
    held = int(round(value * num_normal))
    if value > 0 and num_normal < 2:
        raise InvalidArgument(
            f"{name}: {what} has {num_normal} training image(s); at least 2 are needed (one "
            "to train on, one held out to set the threshold)"
        )
    if value > 0 and held == 0:
        smallest = math.ceil(1e4 / num_normal) / 1e4  # Rounded up: round(it * n) >= 1.
        raise InvalidArgument(
            f"{name} {value:g} holds out no image of {what} ({num_normal} training images); "
            f"use at least {smallest:g}"
        )
    if held >= num_normal:
        raise InvalidArgument(
            f"{name} {value:g} leaves no training image of {what} ({num_normal} images)"
        )
    return held
