"""Compact per-residue values: little-endian float16 bytes (2 bytes a residue)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_DTYPE = np.dtype("<f2")


def encode_values(values: npt.ArrayLike) -> bytes:
    """Pack a 1-D array of per-residue values (clipped to float16's finite range)."""
    array = np.asarray(values, dtype=np.float32).ravel()
    finfo = np.finfo(np.float16)
    return np.clip(array, finfo.min, finfo.max).astype(_DTYPE).tobytes()


def decode_values(blob: bytes | None) -> npt.NDArray[np.float32]:
    """Unpack bytes written by ``encode_values`` (empty array for None)."""
    if not blob:
        return np.zeros(0, dtype=np.float32)
    return np.frombuffer(blob, dtype=_DTYPE).astype(np.float32)
