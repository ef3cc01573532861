"""Markup built in Python for speed: residue tracks, histograms, sparklines (all escaped).

A feature page shows ~20 proteins of a few hundred residues each. One span per residue made the
heaviest demo page 0.5 MB and its rendering the server's bottleneck, so a track carries its
sequence and its values packed (float16, base64) and the browser paints the spans.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence

import numpy as np
from markupsafe import Markup, escape

from app.store.codec import encode_values

LEVELS = 9  # colour steps of the residue scale (class s1..s9; n1..n9 for negative values)
POSITIVE = (179, 38, 30)  # the full colour of a positive value (red)
NEGATIVE = (11, 87, 208)  # of a negative one (blue)
WHITE_TEXT_FROM = 6  # steps this dark or darker carry white letters


def level(value: float, scale: float) -> int:
    """The colour step of ``value`` on a track whose full colour is ``scale`` (0 = unshaded)."""
    if scale <= 0 or value == 0 or math.isnan(value):
        return 0
    return max(1, min(LEVELS, math.ceil(abs(value) / scale * LEVELS)))


def level_rgb(step: int, negative: bool = False) -> tuple[int, int, int]:
    """The colour of step 1..LEVELS: white blended towards the full colour by step / LEVELS."""
    full = NEGATIVE if negative else POSITIVE
    r, g, b = (round(255 + (x - 255) * step / LEVELS) for x in full)
    return r, g, b


def colour_scale_css() -> Markup:
    """The residue classes s1..s9 / n1..n9, so pages, tracks and legends shade by this rule."""
    rules = []
    for step in range(1, LEVELS + 1):
        text = ";color:#fff" if step >= WHITE_TEXT_FROM else ""
        for prefix, negative in (("s", False), ("n", True)):
            rgb = ",".join(map(str, level_rgb(step, negative)))
            rules.append(f".{prefix}{step}{{background:rgb({rgb}){text}}}")
    return Markup("\n".join(rules))


def colour_scale_json() -> str:
    """The same rule for the scripts (``data-colour-scale`` on ``<body>``): static/js/explorer.js
    shades structures and the encode, steering and variant pages' tracks with it."""
    return json.dumps({"levels": LEVELS, "positive": POSITIVE, "negative": NEGATIVE})


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def packed_values(values: Sequence[float]) -> str:
    """Per-residue values as base64 of little-endian float16, the store's own encoding: 2 bytes
    (2.7 characters) a residue, decoded exactly by static/js/explorer.js. Values read from the
    store are float16 already, so the browser gets them bit for bit."""
    return base64.b64encode(encode_values(np.asarray(values, dtype=np.float32))).decode("ascii")


def residue_runs(residue_ids: Sequence[str], positions: Sequence[int]) -> str:
    """A structure's residue -> sequence-position map as JSON runs ``[first id, first position,
    length]``: ids counting up by one alongside positions (or unmapped, -1, throughout). An id
    that is not a plain integer ('52A') is a run of its own. A chain numbered like its sequence
    is one run instead of two arrays of its length; static/js/explorer.js expands them.
    Vectorised: a chain of a thousand residues costs a few numpy passes, not a Python loop."""
    n = len(residue_ids)
    if n == 0:
        return "[]"
    num, plain = _residue_numbers(residue_ids)
    pos = np.asarray(positions, dtype=np.int64)
    if pos.shape != (n,):
        raise ValueError(f"{n} residue ids but {pos.size} sequence positions")
    prev_pos = pos[:-1]
    follows = ((pos[1:] == -1) & (prev_pos == -1)) | ((prev_pos != -1) & (pos[1:] == prev_pos + 1))
    joins = plain[1:] & plain[:-1] & (num[1:] == num[:-1] + 1) & follows
    starts = np.concatenate([[0], np.flatnonzero(~joins) + 1])
    lengths = np.diff(np.concatenate([starts, [n]]))
    runs = [
        [number if is_plain else residue_ids[i], at, length]
        for i, number, is_plain, at, length in zip(
            starts.tolist(), num[starts].tolist(), plain[starts].tolist(),
            pos[starts].tolist(), lengths.tolist(), strict=True,
        )
    ]  # fmt: skip
    return json.dumps(runs, separators=(",", ":"))


# A chain numbered with plain ASCII integers only (no insertion codes, no leading zeros): the
# common case, checked by one regex over the joined ids and parsed by numpy in one call.
_PLAIN_IDS = re.compile(r"(?:[1-9][0-9]*|0)(?:,(?:[1-9][0-9]*|0))*")


def _residue_numbers(residue_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each id as the integer it writes, and whether it is one ('52A', '007', '-0', '٣' are not:
    their number reads 0)."""
    n = len(residue_ids)
    joined = ",".join(residue_ids)
    if joined.count(",") == n - 1 and _PLAIN_IDS.fullmatch(joined):
        return np.fromstring(joined, dtype=np.int64, sep=","), np.ones(n, dtype=bool)
    ids = np.asarray(residue_ids, dtype=str)
    # Plain integers the cheap way (decimal digits, no leading zero), the rest ('52A', '-3') one
    # by one; a digit that is not ASCII ('٣') does not write back as itself, so it is not plain.
    digits = np.char.isdecimal(ids) & ((np.char.str_len(ids) == 1) | ~np.char.startswith(ids, "0"))
    nums: list[int | None] = [None] * n
    for i, text in zip(np.flatnonzero(digits).tolist(), ids[digits].tolist(), strict=True):
        value = int(text)
        nums[i] = value if str(value) == text else None
    for i in np.flatnonzero(~digits).tolist():
        nums[i] = _plain_int(str(ids[i]))
    plain = np.array([v is not None for v in nums], dtype=bool)
    return np.array([0 if v is None else v for v in nums], dtype=np.int64), plain


def _plain_int(text: str) -> int | None:
    """``int(text)`` when it writes back as the same text, else None ('52A', '007', '-0')."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if str(value) == text else None


def residue_track(
    sequence: str, values: Sequence[float], scale: float, label: str = "", packed: str | None = None
) -> Markup:
    """A residue track: the sequence as text, its values packed beside it (``packed``: already
    packed, for a page that shows them twice). The browser paints one span per residue, shaded
    by value/scale (``level``'s rule), with residue, 1-based position and value on hover; without
    scripts the plain sequence remains."""
    aria = escape(label or "residue activations")
    return Markup(
        f'<p class="track" aria-label="{aria}" data-scale="{float(scale)!r}" '
        f'data-values="{packed or packed_values(values)}">{escape(sequence)}</p>'
    )


def legend(scale: float, negative: bool = False) -> Markup:
    """The colour key of residue tracks and structures: step i covers ((i-1)/9, i/9] of ``scale``."""
    cells = "".join(
        f'<span class="s{i}" title="≤ {_fmt(scale * i / LEVELS)}"></span>'
        for i in range(1, LEVELS + 1)
    )
    neg = ""
    if negative:
        neg = "".join(
            f'<span class="n{i}" title="≥ −{_fmt(scale * i / LEVELS)}"></span>'
            for i in range(LEVELS, 0, -1)
        )
    return Markup(
        f'<div class="legend" role="img" aria-label="colour scale from 0 to {_fmt(scale)}">'
        f'<span class="legend-label">{"−" + _fmt(scale) if negative else "0"}</span>{neg}'
        f'<span class="s0" title="0"></span>{cells}'
        f'<span class="legend-label">{_fmt(scale)}</span></div>'
    )


def sparkline(counts: Sequence[int], width: int = 72, height: int = 18) -> Markup:
    """A tiny bar histogram of activation counts (log heights so small bins stay visible)."""
    if not counts or max(counts) <= 0:
        return Markup('<span class="muted">—</span>')
    top = math.log1p(max(counts))
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - h:.1f}" width="{max(bar - 1, 1):.1f}" height="{h:.1f}"/>'
        for i, c in enumerate(counts)
        if (h := height * math.log1p(c) / top) > 0
    )
    total = sum(counts)
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="activation histogram, {total} active">{rects}</svg>'
    )


def histogram(
    edges: Sequence[float], counts: Sequence[int], width: int = 360, height: int = 120
) -> Markup:
    """The feature page's activation histogram, each bar titled with its range and count."""
    if not counts or len(edges) != len(counts) + 1 or max(counts) <= 0:
        return Markup('<p class="muted">No activations recorded.</p>')
    pad, axis = 4, 16
    top = max(counts)
    bar = (width - 2 * pad) / len(counts)
    plot = height - axis
    rects = []
    for i, c in enumerate(counts):
        h = plot * c / top
        rects.append(
            f'<rect x="{pad + i * bar:.1f}" y="{plot - h:.1f}" width="{max(bar - 1, 1):.1f}" '
            f'height="{h:.1f}"><title>{_fmt(edges[i])}–{_fmt(edges[i + 1])}: {c}</title></rect>'
        )
    return Markup(
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram of activations from {_fmt(edges[0])} to {_fmt(edges[-1])}">'
        f'{"".join(rects)}<line x1="0" y1="{plot}" x2="{width}" y2="{plot}"/>'
        f'<text x="{pad}" y="{height - 3}">{_fmt(edges[0])}</text>'
        f'<text x="{width - pad}" y="{height - 3}" text-anchor="end">{_fmt(edges[-1])}</text></svg>'
    )


def residue_ranges(ranges: Sequence[Sequence[int]], length: int, most: int = 3) -> str:
    """ "residues 12–240 of 380" for the runs a structure chain resolves (at most ``most`` runs
    named, then how many more and how many residues in all)."""
    if not ranges:
        return f"no residue of {length}"
    named = ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in ranges[:most])
    if len(ranges) <= most:
        return f"residues {named} of {length}"
    n = sum(b - a + 1 for a, b in ranges)
    return f"residues {named} and {len(ranges) - most} more runs ({n} of {length})"


def _share(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{100 * share:.0f}%"


def coverage_note(
    ranges: Sequence[Sequence[int]],
    length: int,
    share: float | None = None,
    peak: str | None = None,
    peak_covered: bool | None = None,
) -> str:
    """What a 3D view can show of a feature, in words: the sequence range its chain covers, the
    share of the feature's activation on this protein inside it, whether it resolves the peak."""
    parts = [f"Structure covers {residue_ranges(ranges, length)}"]
    if share is not None:
        parts.append(f"{_share(share)} of this feature's activation on this protein lies inside it")
    if peak is not None and peak_covered is not None:
        parts.append(f"peak residue {peak} {'covered' if peak_covered else 'not covered'}")
    return "; ".join(parts) + "."


def register(env_globals: dict[str, object]) -> None:
    env_globals.update(
        residue_track=residue_track, legend=legend, sparkline=sparkline, histogram=histogram,
        packed_values=packed_values, residue_runs=residue_runs,
        tojson_compact=lambda x: json.dumps(x, separators=(",", ":")),
        coverage_note=coverage_note, residue_ranges=residue_ranges, level=level,
        colour_scale_css=colour_scale_css, colour_scale_json=colour_scale_json,
    )  # fmt: skip
