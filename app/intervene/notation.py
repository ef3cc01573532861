"""The request notations of steering and variants as regular expressions (torch-free), shared by the
API schema and the parsers so the two accept exactly the same strings."""

from __future__ import annotations

EDIT_PATTERN = r"(?:[pP]\.)?(?:[A-Za-z][0-9]+[A-Za-z]|[dD][eE][lL][0-9]+(?:_[0-9]+)?)"
# One variant: edits (``A123V``, ``p.A123V``, ``del45_50``, ``del45``) joined by ``:`` or ``;``.
VARIANT_PATTERN = rf"^\s*{EDIT_PATTERN}(?:\s*[:;]\s*{EDIT_PATTERN})*\s*$"
# Positions of an intervention: ``all``, or 1-based positions and ranges such as ``10-20,33``.
POSITIONS_PATTERN = r"^\s*(?:all|[0-9]+(?:-[0-9]+)?(?:\s*,\s*[0-9]+(?:-[0-9]+)?)*)\s*$"
