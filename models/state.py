"""Plain-data encoding of model state.

State is saved to Kafka as JSON: numbers, strings, lists and objects only. Arrays are
stored as base64 of their little-endian bytes with dtype and shape. Nothing is ever
pickled, so loading state read from a topic cannot execute code.

>>> import numpy as np
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> b = decode_array(encode_array(a))
>>> bool((a == b).all()), b.dtype.name, b.shape
(True, 'float32', (2, 3))
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

__all__ = ["STATE_SCHEMA", "StateError", "decode_array", "encode_array"]

#: Bumped whenever the layout of saved state changes incompatibly.
STATE_SCHEMA = 1
_ALLOWED_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "uint32", "int8"}


class StateError(ValueError):
    """Saved state that cannot be loaded (wrong schema, corrupt or hostile content)."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """Encode a numeric array as a JSON-safe dict."""
    arr = np.ascontiguousarray(array)
    dtype = arr.dtype.newbyteorder("<")
    return {
        "dtype": arr.dtype.name,
        "shape": list(arr.shape),
        "b64": base64.b64encode(arr.astype(dtype, copy=False).tobytes()).decode("ascii"),
    }


def decode_array(data: dict[str, Any]) -> np.ndarray:
    """Decode :func:`encode_array` output, checking dtype, shape and size."""
    try:
        dtype_name = data["dtype"]
        shape = tuple(int(n) for n in data["shape"])
        raw = base64.b64decode(data["b64"], validate=True)
    except (KeyError, OverflowError, TypeError, ValueError) as exc:
        raise StateError(f"malformed array: {exc}") from None
    if dtype_name not in _ALLOWED_DTYPES:
        raise StateError(f"dtype {dtype_name!r} not allowed")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if any(n < 0 for n in shape) or expected != len(raw):
        raise StateError(f"array of shape {shape} does not match {len(raw)} bytes")
    try:
        return np.frombuffer(raw, dtype=dtype).astype(dtype_name).reshape(shape).copy()
    except ValueError as exc:  # e.g. an empty array with a dimension numpy cannot index
        raise StateError(f"array of shape {shape} cannot be built: {exc}") from None
