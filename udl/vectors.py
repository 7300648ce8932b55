"""Check user-supplied embedding vectors (an Arrow list column) at ingest, before they are
clustered: the ingest step's validator rejects bad rows with these reasons, and decides the
corpus's dimension from the first valid vector when it is not configured.

Every row ends up either among the good vectors or among the rejects with a reason code, so
no row is dropped silently. Reasons, checked in this order (a row gets the first that applies):

* ``null_vector``: the vector itself is null;
* ``wrong_length``: its length differs from ``dim``;
* ``null_value``: one of its values is null;
* ``non_finite``: one of its values is NaN or infinite once cast to float32 (a float64 value
  beyond float32's range counts as infinite).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from udl.errors import ConfigError

__all__ = [
    "NON_FINITE",
    "NULL_VALUE",
    "NULL_VECTOR",
    "WRONG_LENGTH",
    "VectorCheck",
    "first_valid_length",
    "kept_vectors",
    "validate_vectors",
    "vector_detail",
]

NULL_VECTOR = "null_vector"
WRONG_LENGTH = "wrong_length"
NULL_VALUE = "null_value"
NON_FINITE = "non_finite"


@dataclass(frozen=True)
class VectorCheck:
    """Outcome of :func:`validate_vectors`.

    Attributes:
        vectors: float32 array (n_good, dim), the good rows in column order.
        good_rows: int64 (n_good,), their positions in the column.
        reject_rows: int64 (n_rejected,), positions of the rejected rows, ascending.
        reject_reasons: reason code of each rejected row (see the module docstring).
        dim: the vector length required.
    """

    vectors: NDArray[np.float32]
    good_rows: NDArray[np.int64]
    reject_rows: NDArray[np.int64]
    reject_reasons: list[str]
    dim: int


def validate_vectors(column: pa.Array | pa.ChunkedArray, dim: int | None = None) -> VectorCheck:
    """Split a column of supplied vectors into good float32 rows and rejects with reasons.

    Args:
        column: Arrow list, large list or fixed-size list of integers or floats, one vector
            per document.
        dim: required length. None: the fixed size of a fixed-size list, otherwise the most
            common length among non-null vectors (ties to the smaller length; 1 if
            every vector is null or empty).

    Returns:
        The good vectors with their row positions, and the rejected positions with reasons.

    Raises:
        ConfigError: if the column is not a list of numbers, or ``dim`` is not >= 1.

    Example:
        >>> col = pa.array([[1.0, 2.0], None, [1.0], [float("nan"), 0.0]])
        >>> check = validate_vectors(col)
        >>> check.good_rows.tolist(), check.reject_reasons
        ([0], ['null_vector', 'wrong_length', 'non_finite'])
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = arr.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (is_list or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    ):
        raise ConfigError(
            f"The embedding column must be a list of integers or floats. Got {kind} instead; "
            "store one numeric array per row."
        )
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ConfigError(f"The 'dim' parameter must be an int >= 1. Got {dim!r} instead.")
    n = len(arr)
    null = arr.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
    dim = dim or _common_length(kind, lengths[~null])

    present = np.flatnonzero(~null)
    # flatten() drops null vectors, so the values line up with `present` row by row.
    values = arr.flatten()
    owner = np.repeat(present, lengths[present])
    value_null = np.bincount(owner, values.is_null().to_numpy(zero_copy_only=False), n) > 0
    with np.errstate(over="ignore", invalid="ignore"):
        floats = values.to_numpy(zero_copy_only=False).astype(np.float32)
    bad_value = ~np.isfinite(floats)
    non_finite = np.bincount(owner, bad_value, n) > 0

    reasons = np.full(n, "", dtype=object)
    for mask, reason in (
        (non_finite, NON_FINITE),
        (value_null, NULL_VALUE),
        (lengths != dim, WRONG_LENGTH),
        (null, NULL_VECTOR),
    ):
        # Later assignments win, so this loop runs from the last reason to the first.
        reasons[mask] = reason
    good = reasons == ""
    keep_values = np.repeat(good[present], lengths[present])
    return VectorCheck(
        vectors=floats[keep_values].reshape(-1, dim),
        good_rows=np.flatnonzero(good).astype(np.int64),
        reject_rows=np.flatnonzero(~good).astype(np.int64),
        reject_reasons=reasons[~good].tolist(),
        dim=dim,
    )


def _common_length(kind: pa.DataType, lengths: NDArray[np.int64]) -> int:
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    positive = lengths[lengths > 0]
    return int(np.argmax(np.bincount(positive))) if positive.size else 1


def first_valid_length(column: pa.Array) -> int | None:
    """Length of the first vector, in row order, that `validate_vectors` accepts at its own
    length (None if there is none).

    Args:
        column: Arrow list array of numbers, one vector (or null) per row.
    """
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    found: tuple[int, int] | None = None  # (row, length)
    values, first = np.unique(lengths, return_index=True)
    for row, length in sorted(zip(first.tolist(), values.tolist(), strict=True)):
        if length == 0 or (found is not None and row > found[0]):
            continue
        good = validate_vectors(column, int(length)).good_rows
        if len(good) and (found is None or good[0] < found[0]):
            found = (int(good[0]), int(length))
    return found[1] if found is not None else None


def kept_vectors(check: VectorCheck, keep: NDArray[np.bool_]) -> pa.FixedSizeListArray:
    """The vectors of the kept rows (each has a good vector) as the corpus `embedding` column."""
    position = np.full(len(keep), -1, np.int64)
    position[check.good_rows] = np.arange(len(check.good_rows))
    flat = check.vectors[position[keep]].reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), check.dim)


def vector_detail(vectors: pa.Array, i: int, reason: str, dim: int) -> str:
    """The reject detail of row `i`'s vector, rejected for `reason`."""
    if reason == NULL_VECTOR:
        return "the vector is null"
    if reason == WRONG_LENGTH:
        return f"{len(vectors[i])} values, expected {dim}"
    if reason == NULL_VALUE:
        return "a value is null"
    return "a value is NaN or infinite (as float32)"
