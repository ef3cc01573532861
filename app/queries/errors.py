"""What a read of the store raises when the request names nothing or is malformed."""

from __future__ import annotations


class NotFound(LookupError):
    """An id that names nothing published (routes answer 404)."""


class BadCursor(ValueError):
    """A cursor that is not a keyset position (routes answer 422)."""
