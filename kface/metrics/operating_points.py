"""Operating points: the thresholds at chosen false-accept rates, and the FAR and TAR a threshold gives."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .base import _as_pairs
from .thresholds import choose_threshold

#: The default point: the model's own threshold (max-accuracy on its val pairs).
BALANCED = "balanced"
#: The false-accept rates every shipped card carries a threshold for.
FAR_LEVELS = (1e-2, 1e-3)


def point_name(far: float) -> str:
    """The name of the point at false-accept rate ``far``: ``far=1e-2`` for 0.01."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"far={mantissa}e{int(exponent)}"


def far_of(name: str) -> float:
    """The false-accept rate a ``far=...`` point name stands for."""
    try:
        return float(name.split("=", 1)[1])
    except (IndexError, ValueError):
        raise InputError(f"{name!r} is not a far=X operating point") from None


def far_threshold(distances: Any, labels: Any, far: float) -> float:
    """The largest threshold whose false-accept rate on these pairs is <= ``far`` (the ``far=X`` rule)."""
    return choose_threshold(distances, labels, f"far={far:g}").value


def rates_at(distances: Any, labels: Any, threshold: float) -> dict:
    """What ``threshold`` does on these pairs: false-accept rate over the strangers, true-accept rate over
    the same-person pairs, and both counts."""
    d, same = _as_pairs(distances, labels)
    accepted = d <= threshold
    strangers, matches = int((~same).sum()), int(same.sum())
    return {"far": float(accepted[~same].mean()) if strangers else None,
            "tar": float(accepted[same].mean()) if matches else None,
            "false_accepts": int(accepted[~same].sum()), "strangers": strangers, "same_pairs": matches}


def choose_point(points: dict, operating_point: str | None = None, far: float | None = None) -> str:
    """The name of the point a user asked for (by name, or by its false-accept rate) among ``points``."""
    if operating_point is not None and far is not None:
        raise InputError("give --operating-point or --far, not both")
    if far is not None:
        wanted = next((name for name in points if name != BALANCED and np.isclose(far_of(name), far)), None)
        if wanted is None:
            listed = ", ".join(f"{far_of(n):g}" for n in points if n != BALANCED) or "no false-accept rate"
            raise InputError(f"--far {far:g}: this model's card has points at {listed}")
        return wanted
    name = operating_point or BALANCED
    if name not in points:
        raise InputError(f"--operating-point {name}: this model has {', '.join(points)}")
    return name
