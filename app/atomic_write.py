"""Atomic file writes: a crash leaves the previous file or the new one, never half of one.

Every writer goes through here: the new content lands in ``{name}.{pid}.{thread}.tmp`` beside the target (same
file system, so the rename is atomic), is flushed to disk, then renamed over the target. The
trainer's resumption trusts a file that exists; this is what makes that safe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(target: Path) -> Path:
    """Where ``target``'s new content is written before the rename: one per process and thread,
    so workers that make the same file at once (a decompressed ontology, a cached answer) do not
    write into each other's."""
    return target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a file name (safetensors, torch); once the
    block ends it is synced and renamed onto ``target``. On an error the temporary is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Yield an open handle on the temporary (``np.savez``, ``gzip`` and csv writers take one);
    renamed onto ``target`` once the block ends."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()


def write_atomic(target: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``target`` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_file(target, "wb") as handle:
        handle.write(payload)
