"""Parameter and input checks shared by the clustering functions (sklearn-style messages)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from udl.errors import ConfigError

Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine", "l2")


def check_x(x: NDArray[np.floating], caller: str) -> NDArray[np.floating]:
    """``x`` as an array, if it is a finite, real, 2-D array with at least one column.

    Raises:
        ConfigError: naming the first offending row for NaN/inf.
    """
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ConfigError(
            f"The 'x' parameter of {caller} must be a 2-D array (n_points, n_dims) with at least "
            f"one column. Got shape {arr.shape} instead."
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(
            f"The 'x' parameter of {caller} must hold real numbers. Got dtype {arr.dtype} instead."
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise ConfigError(
            f"The 'x' parameter of {caller} contains NaN or inf (first in row "
            f"{int(np.argmin(finite))}); drop or impute those rows first."
        )
    return arr


def check_positive_int(value: int, name: str, caller: str) -> None:
    """Raise ConfigError unless ``value`` is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(
            f"The '{name}' parameter of {caller} must be an integer >= 1. Got {value!r} instead."
        )


def check_positive_float(value: float, name: str, caller: str) -> None:
    """Raise ConfigError unless ``value`` is a finite number > 0."""
    is_number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not (is_number and value > 0 and math.isfinite(value)):
        raise ConfigError(
            f"The '{name}' parameter of {caller} must be a finite number > 0. "
            f"Got {value!r} instead."
        )


def check_metric(metric: str, caller: str) -> None:
    """Raise ConfigError unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ConfigError(
            f"The 'metric' parameter of {caller} must be one of {METRICS}. Got {metric!r} instead."
        )
