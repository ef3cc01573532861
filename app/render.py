"""Markup built in Python for speed: residue tracks, histograms, sparklines (all escaped).

A feature page shows ~20 proteins of a few hundred residues each; one Jinja loop iteration per
residue would dominate the page's time, so tracks are joined here, escaping every string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from markupsafe import Markup, escape

LEVELS = 9  # colour steps of the residue scale (class s1..s9; n1..n9 for negative values)


def level(value: float, scale: float) -> int:
    """The colour step of ``value`` on a track whose full colour is ``scale`` (0 = unshaded)."""
    if scale <= 0 or value == 0 or math.isnan(value):
        return 0
    return max(1, min(LEVELS, math.ceil(abs(value) / scale * LEVELS)))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


_CLASSES = ("", *(f' class="s{i}"' for i in range(1, LEVELS + 1)))
_NEG_CLASSES = ("", *(f' class="n{i}"' for i in range(1, LEVELS + 1)))


def residue_steps(values: npt.NDArray[np.float32], scale: float) -> npt.NDArray[np.int64]:
    """``level`` for a whole track at once (same rule: ceil(|v| / scale * 9), clipped to 1..9)."""
    if scale <= 0:
        return np.zeros(values.shape, dtype=np.int64)
    steps = np.ceil(np.abs(values.astype(np.float64)) / scale * LEVELS).clip(0, LEVELS)
    steps[np.isnan(values)] = 0
    return steps.astype(np.int64)


def _letters(sequence: str) -> list[str]:
    return [c if c.isalpha() else str(escape(c)) for c in sequence]


def residue_track(sequence: str, values: Sequence[float], scale: float, label: str = "") -> Markup:
    """One span per residue, shaded by value/scale, with residue, 1-based position and value on hover."""
    vals = np.zeros(len(sequence), dtype=np.float32)
    n = min(len(sequence), len(values))
    vals[:n] = np.asarray(values[:n], dtype=np.float32)
    steps = residue_steps(vals, scale).tolist()
    negative = (vals < 0).tolist()
    parts = [
        f'<span{(_NEG_CLASSES if neg else _CLASSES)[step]} title="{aa}{i}: {v:.4g}">{aa}</span>'
        for i, aa, v, step, neg in zip(
            range(1, len(sequence) + 1),
            _letters(sequence),
            vals.tolist(),
            steps,
            negative,
            strict=False,
        )
    ]
    aria = escape(label or "residue activations")
    return Markup(
        f'<p class="track" aria-label="{aria}" data-scale="{scale:.6g}">{"".join(parts)}</p>'
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


def viewer_json(values: Sequence[float]) -> str:
    """Per-sequence-position values as compact JSON for a data attribute (autoescaped there)."""
    return json.dumps([round(v, 4) for v in values], separators=(",", ":"))


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
        viewer_json=viewer_json, tojson_compact=lambda x: json.dumps(x, separators=(",", ":")),
        coverage_note=coverage_note, residue_ranges=residue_ranges,
    )  # fmt: skip
