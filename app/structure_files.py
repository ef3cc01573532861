"""Serving a stored structure's coordinates as text: one rule for the feature/protein pages'
``/structures/{id}.pdb|.cif`` and the encode page's ``/encode/structure/{id}`` (whose URL the
encode API returns, so both URLs stay)."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import PlainTextResponse, Response

from app.store.schema import Structure


@lru_cache(maxsize=256)
def _read_structure(path: str) -> str:
    raw = Path(path).read_bytes()
    return (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8", "replace")


def structure_response(
    structure: Structure | None, structure_id: int, fmt: str | None = None
) -> Response:
    """The file as text (cached a day by clients), or a 404 naming what is missing, in the app's
    error shape; ``fmt`` (``pdb`` / ``mmcif``), when given, must be the stored format."""
    if structure is None:
        raise HTTPException(404, f"no structure with id {structure_id}")
    if fmt is not None and structure.format != fmt:
        raise HTTPException(404, f"structure {structure_id} is {structure.format}, not {fmt}")
    try:
        text = _read_structure(structure.file_path)
    except OSError as exc:
        raise HTTPException(404, f"structure file of {structure_id} is missing") from exc
    return PlainTextResponse(text, headers={"Cache-Control": "public, max-age=86400"})
