"""Errors of on-demand encoding, importable without torch (the page routes never load it)."""

from __future__ import annotations


class EncodingUnavailable(RuntimeError):
    """The server cannot encode for this dictionary (missing checkpoint or weights): a 503."""


class UnknownSae(LookupError):
    """No published dictionary with that id: a 404."""
