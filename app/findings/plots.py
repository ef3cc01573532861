"""Findings figures: matplotlib (Agg) plots of a run's summaries, returned as SVG text.

The server renders these on the Findings page (``app.findings.render``) and ``protsae trainer
report`` writes them to a folder; both feed them the dicts ``app.queries.findings`` reads from the
store.

Every ``plot_*`` takes the summaries a stage wrote plus ``FigureInputs`` (run, model, corpus),
states those inputs in the title and in the SVG's ``<desc>``, and returns the SVG as a string.
Each summary is a dict with ``"dictionary"`` (its name) and optionally ``"kind"``: one of
``features`` (SAE/transcoder), ``neurons`` (the ESM2 neuron baseline) or ``control`` (null
controls). Without ``kind``, names starting with ``neurons`` are neurons and names containing
``control`` or ``random`` are controls; everything else is features. Further keys per figure:

- ``plot_sae_fidelity``: ``fve``, ``l0``, ``dead_fraction``, ``loss_recovered`` (each may be
  None) and, where measured, ``ce_clean``/``ce_zero`` (the gap loss recovered is a ratio of)
  — ``saes/{name}/metrics.json``.
- ``plot_go_hit_rates``: ``bh`` and ``bonferroni``, each ``{"pct_features_with_hit": float}``
  (and ``length_bh``, the same, where the length-stratified test ran)
  (``bh`` may also give ``pct_active_features_with_hit``: drawn as a diamond)
  — ``go/{name}/summary.json``.
- ``plot_go_hits_per_level``: ``hits_per_level.by_level`` = ``{level: {"hits": int,
  "features": int}}`` — ``go/{name}/summary.json``.
- ``plot_fold_enrichment``: ``fold_enrichment``, the significant hits' fold enrichments
  (``GoEnrichment.fold_enrichment`` of the store's BH-significant rows).
- ``plot_explanation_r``: ``pearson_r``, one value per scored feature.
- ``plot_concept_f1``: ``best_per_concept`` = ``[{"concept", "feature", "f1_test",
  "f1_fire_everywhere_test"}]`` (the baseline optional) —
  ``concepts/{name}/summary.json``.

Bars and points that stand for a dictionary or a feature carry a hyperlink when ``link`` is
given (``link(dictionary, feature_or_None) -> url``), so a figure leads to the features behind it.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.use("Agg")  # no display; figures are built with the object API (no pyplot state)

Summary = dict[str, Any]
Link = Callable[[str, int | None], str]
KIND_COLOURS = {"features": "#1f77b4", "neurons": "#ff7f0e", "control": "#7f7f7f"}


@dataclass(frozen=True)
class FigureInputs:
    """What a figure was computed from; stated on every figure."""

    run: str
    model: str
    corpus: str

    def line(self) -> str:
        return f"run {self.run} · model {self.model} · {self.corpus}"


def kind_of(summary: Summary) -> str:
    if "kind" in summary:
        return str(summary["kind"])
    name = str(summary["dictionary"]).lower()
    if name.startswith("neurons"):
        return "neurons"
    if "control" in name or "random" in name:
        return "control"
    return "features"


def _svg(fig: Figure, title: str, inputs: FigureInputs, caption: str) -> str:
    line = textwrap.fill(
        inputs.line(), width=int(fig.get_figwidth() * 11)
    )  # ~11 chars/inch at 10 pt
    fig.suptitle(f"{title}\n{line}", fontsize=10)
    fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.StringIO()
    desc = f"{title}. {inputs.line()}. {caption}"
    # text stays text (searchable); the salt keeps clip-path ids distinct between the figures
    # of one page, since they are inlined side by side.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig.savefig(buf, format="svg", metadata={"Title": title, "Description": desc})
    return buf.getvalue()


def inline_svg(svg: str) -> str:
    """The ``<svg>`` element alone (no XML prolog or DOCTYPE), for inlining in HTML."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    return svg[start:]


def _names(summaries: Sequence[Summary]) -> list[str]:
    return [str(s["dictionary"]) for s in summaries]


def _colours(summaries: Sequence[Summary]) -> list[str]:
    return [KIND_COLOURS.get(kind_of(s), "#2ca02c") for s in summaries]


def _link_bars(bars: Any, names: Sequence[str], link: Link | None) -> None:
    if link is not None:
        for bar, name in zip(bars, names, strict=True):
            bar.set_url(link(name, None))


# Line and histogram plots draw one series per dictionary: a colour each (tab20's saturated
# half first, then its light half), the kind as line style, so same-kind series stay apart.
_SERIES_COLOURS = [matplotlib.colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
KIND_LINESTYLES = {"features": "-", "neurons": "--", "control": ":"}
KIND_MARKERS = {"features": "o", "neurons": "s", "control": "x"}


def series_styles(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Matplotlib style per series: a distinct colour, the line style and marker of its kind."""
    return [
        {"color": _SERIES_COLOURS[i % len(_SERIES_COLOURS)],
         "linestyle": KIND_LINESTYLES.get(kind_of(s), "-."),
         "marker": KIND_MARKERS.get(kind_of(s), "^")}
        for i, s in enumerate(summaries)
    ]  # fmt: skip


def _line_legend(ax: Any, n_entries: int) -> None:
    """A legend inside the axes for a few lines; beside them (right) for many, where it would
    otherwise cover the data (a 4-layer run has 14 dictionaries)."""
    if n_entries <= 6:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


# Loss recovered below this is drawn clipped (hatched, its value printed): a transcoder whose
# block is worth a few hundredths of a nat can score -700, which would flatten every other bar.
LOSS_RECOVERED_FLOOR = -1.0


def loss_gap(metrics: Summary) -> float | None:
    """CE ablated − CE clean (nats): the denominator loss recovered is a ratio of."""
    clean, ablated = metrics.get("ce_clean"), metrics.get("ce_zero")
    return None if clean is None or ablated is None else float(ablated) - float(clean)


def _loss_panel(ax: Any, metrics: Sequence[Summary], names: list[str], link: Link | None) -> None:
    values = [m.get("loss_recovered") for m in metrics]
    clipped = [v is not None and v < LOSS_RECOVERED_FLOOR for v in values]
    heights = [max(float(v), LOSS_RECOVERED_FLOOR) if v is not None else 0.0 for v in values]
    bars = ax.bar(range(len(names)), heights, color=_colours(metrics),
                  hatch=["//" if c else "" for c in clipped], edgecolor="white")  # fmt: skip
    _link_bars(bars, names, link)
    for i, (m, v) in enumerate(zip(metrics, values, strict=True)):
        gap = loss_gap(m)
        text = "n/a" if v is None else f"{v:.3g}" + ("" if gap is None else f"\ngap {gap:.2g}")
        below = heights[i] < 0
        ax.annotate(text, (i, heights[i]), ha="center", va="top" if below else "bottom",
                    fontsize=6, xytext=(0, -2 if below else 2), textcoords="offset points")  # fmt: skip
    low = min([0.0, *heights])
    ax.set_ylim(low - 0.75 if low < 0 else 0.0, max(1.0, *heights) + 0.8)  # room for labels
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axhline(1, color="black", linewidth=0.5, linestyle=":")
    title = "LM loss recovered"
    if any(clipped):
        title += f"\n(hatched: below {LOSS_RECOVERED_FLOOR:g}, clipped)"
    ax.set_title(title, fontsize=9)


def plot_sae_fidelity(
    metrics: Sequence[Summary], inputs: FigureInputs, *, link: Link | None = None
) -> str:
    """FVE, L0, dead fraction and loss recovered per SAE/transcoder (None shown as n/a).

    Loss recovered is ``(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)``; each bar carries
    its value and the gap it is a ratio of (``ce_clean``/``ce_zero`` where the summary has them),
    and values below ``LOSS_RECOVERED_FLOOR`` are clipped so the others stay readable."""
    panels = (
        ("fve", "fraction of variance explained"),
        ("l0", "L0 (active latents per input)"),
        ("dead_fraction", "dead fraction"),
    )
    names = _names(metrics)
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 4)
    for ax, (key, label) in zip(axes[:3], panels, strict=True):
        values = [m.get(key) for m in metrics]
        heights = [float(v) if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(names)), heights, color=_colours(metrics))
        _link_bars(bars, names, link)
        for i, v in enumerate(values):
            ax.annotate("n/a" if v is None else f"{v:.3g}", (i, heights[i]), ha="center",
                        va="bottom", fontsize=7)  # fmt: skip
        ax.set_title(label, fontsize=9)
    _loss_panel(axes[3], metrics, names, link)
    for ax in axes:
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    caption = (
        "Held-out metrics from each dictionary's training (saes/*/metrics.json). Loss recovered: "
        "(CE ablated − CE spliced) / (CE ablated − CE clean), gap = CE ablated − CE clean in nats."
    )
    return _svg(fig, "SAE fidelity", inputs, caption)


def plot_go_hit_rates(
    summaries: Sequence[Summary], inputs: FigureInputs, *, link: Link | None = None
) -> str:
    """% of features with ≥1 significant GO term: our protocol's BH and Bonferroni (bars) and
    the seed paper's protocol (goatools defaults: two-sided, is_a, human, BP; crosses)."""
    # Horizontal bars: the figure grows in height with the dictionaries, so names and bars stay
    # legible for a 14-dictionary run as for a 3-dictionary one.
    names = _names(summaries)
    y = np.arange(len(names))
    fig = Figure(figsize=(9.0, 1.6 + 0.42 * len(names)))
    ax = fig.subplots()
    for offset, key, hatch, label in ((-0.2, "bh", "", "BH (q < α)"),
                                      (0.2, "bonferroni", "//", "Bonferroni (strict)")):  # fmt: skip
        vals = [float(s[key]["pct_features_with_hit"]) for s in summaries]
        bars = ax.barh(y + offset, vals, 0.4, color=_colours(summaries), hatch=hatch,
                       edgecolor="white", label=label)  # fmt: skip
        _link_bars(bars, names, link)
    # Dead latents can have no hit; the same BH count over the latents that fire at all.
    active = [(i, s["bh"].get("pct_active_features_with_hit")) for i, s in enumerate(summaries)]
    active = [(i, v) for i, v in active if v is not None]
    if active:
        ax.scatter([float(v) for _, v in active], [y[i] - 0.2 for i, _ in active], marker="D",
                   s=18, color="black", zorder=3, label="BH, % of active features")  # fmt: skip
    # The same BH count when each term is tested within protein-length strata.
    within = [(i, float(v)) for i, s in enumerate(summaries)
              if (v := (s.get("length_bh") or {}).get("pct_features_with_hit")) is not None]  # fmt: skip
    if within:
        ax.scatter([v for _, v in within], [y[i] - 0.2 for i, _ in within], marker="|",
                   s=140, linewidths=2.2, color="#b3261e", zorder=4,
                   label="BH within length strata")  # fmt: skip
    paper = [(i, float(v)) for i, s in enumerate(summaries)
             if (v := ((s.get("protocols") or {}).get("paper") or {}).get("pct_features_with_hit"))
             is not None]  # fmt: skip
    if paper:
        ax.scatter([v for _, v in paper], [y[i] + 0.2 for i, _ in paper], marker="x", s=40,
                   linewidths=1.8, color="#1f3a93", zorder=4,
                   label="seed paper's protocol (BP, Bonferroni)")  # fmt: skip
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # first dictionary on top, as listed
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of features with ≥1 significant term")
    # Each handle carries its own label (matching by position put the diamond on "BH").
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    caption = "Our (strict) protocol: plain bars Benjamini–Hochberg, hatched Bonferroni" + (
        "; blue crosses: the seed paper's protocol (goatools defaults: two-sided Fisher, is_a "
        "propagation, BP, human population, Bonferroni within the feature)" if paper else ""
    ) + (
        "; diamonds: BH over the features that fire on ≥1 protein (dead latents left out)"
        if active else ""
    ) + (
        "; red ticks: BH with each term tested within protein-length strata (what length "
        "alone explains removed)" if within else ""
    ) + ". Colour: " + ", ".join(f"{k} {c}" for k, c in KIND_COLOURS.items())  # fmt: skip
    return _svg(fig, "GO enrichment: features vs neurons vs controls", inputs, caption)


def plot_go_hits_per_level(summaries: Sequence[Summary], inputs: FigureInputs) -> str:
    """Significant (BH) hits per level of the GO hierarchy, one line per dictionary."""
    fig = Figure(figsize=(6 if len(summaries) <= 6 else 8.5, 3.8))
    ax = fig.subplots()
    for s, style in zip(summaries, series_styles(summaries), strict=True):
        table = s["hits_per_level"]["by_level"]
        levels = sorted(table, key=int)
        ax.plot([int(v) for v in levels], [table[v]["hits"] for v in levels],
                label=s["dictionary"], **style)  # fmt: skip
    ax.set_xlabel("GO level (shortest is_a path to the root)")
    ax.set_ylabel("significant hits (BH)")
    ax.set_yscale("symlog")
    _line_legend(ax, len(summaries))
    caption = (
        "Enriched terms at every depth: specific (deep) terms, not only root-level ones. "
        "Line style: solid features, dashed neurons, dotted controls."
    )
    return _svg(fig, "GO hits per level", inputs, caption)


def plot_fold_enrichment(summaries: Sequence[Summary], inputs: FigureInputs) -> str:
    """Distribution of fold enrichment of significant hits (log scale), per dictionary."""
    fig = Figure(figsize=(6 if len(summaries) <= 6 else 9, 3.8))
    ax = fig.subplots()
    values = [np.asarray(s["fold_enrichment"], dtype=float) for s in summaries]
    positive = np.concatenate([v[v > 0] for v in values] + [np.ones(1)])
    bins = np.geomspace(max(positive.min(), 1e-2), max(positive.max(), 1.01), 30)
    for s, v, style in zip(summaries, values, series_styles(summaries), strict=True):
        ax.hist(v[v > 0], bins=list(bins), histtype="step", linewidth=1.5, color=style["color"],
                linestyle=style["linestyle"], label=f"{s['dictionary']} (n={len(v)})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("fold enrichment (study frequency / population frequency)")
    ax.set_ylabel("significant hits")
    _line_legend(ax, len(summaries))
    caption = "Significant hits only. Line style: solid features, dashed neurons, dotted controls."
    return _svg(fig, "GO fold enrichment", inputs, caption)


def plot_explanation_r(summaries: Sequence[Summary], inputs: FigureInputs) -> str:
    """Pearson r of predicted vs true activations, features vs neurons (box + points)."""
    names = _names(summaries)
    data = [np.asarray(s["pearson_r"], dtype=float) for s in summaries]
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.8))
    ax = fig.subplots()
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, (s, d) in enumerate(zip(summaries, data, strict=True), start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=6, alpha=0.5,
                   color=KIND_COLOURS.get(kind_of(s)))  # fmt: skip
        ax.annotate(f"median {np.median(d):.2f}\nn={len(d)}", (i, 1.02), ha="center",
                    fontsize=7, annotation_clip=False)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Pearson r")
    ax.set_ylim(-1, 1)
    caption = "One point per scored feature; held-out proteins only."
    return _svg(fig, "Explanations: predicted vs true activation", inputs, caption)


def plot_concept_f1(
    summaries: Sequence[Summary],
    inputs: FigureInputs,
    *,
    associated_f1: float = 0.5,
    link: Link | None = None,
) -> str:
    """Best test F1 per concept (feature chosen on train chains), one bar per dictionary."""
    concepts = sorted({b["concept"] for s in summaries for b in s["best_per_concept"]})
    y = np.arange(len(concepts))
    height = 0.8 / max(len(summaries), 1)
    fig = Figure(figsize=(7, 1.2 + 0.32 * len(concepts) * max(1, len(summaries) / 2)))
    ax = fig.subplots()
    for j, s in enumerate(summaries):
        best = {b["concept"]: b for b in s["best_per_concept"]}
        f1 = [best[c]["f1_test"] if c in best else 0.0 for c in concepts]
        n_assoc = sum(v > associated_f1 for v in f1)
        bars = ax.barh(y + j * height, f1, height, color=KIND_COLOURS.get(kind_of(s)),
                       alpha=1.0 - 0.5 * j / max(len(summaries), 1),
                       label=f"{s['dictionary']} ({n_assoc} concepts > {associated_f1})")  # fmt: skip
        if link is not None:
            for bar, c in zip(bars, concepts, strict=True):
                if c in best:
                    bar.set_url(link(str(s["dictionary"]), int(best[c]["feature"])))
    baseline = {
        b["concept"]: b["f1_fire_everywhere_test"]
        for s in summaries
        for b in s["best_per_concept"]
        if b.get("f1_fire_everywhere_test") is not None
    }
    if baseline:
        ys = [y[i] + 0.4 - height / 2 for i, c in enumerate(concepts) if c in baseline]
        ax.scatter([baseline[c] for c in concepts if c in baseline], ys, marker="|", s=120,
                   color="black", zorder=3, label="fire everywhere (test F1)")  # fmt: skip
    ax.axvline(associated_f1, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(y + 0.4 - height / 2, concepts, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on test chains of the best feature (chosen on train chains)")
    ax.legend(fontsize=7, loc="lower right")
    caption = (
        "Test-chain F1 of each dictionary's feature chosen, with its threshold of max-normalised "
        "activation, on train chains; black tick: the test F1 of flagging every residue; "
        f"dashed: InterPLM's association criterion F1 > {associated_f1}."
    )
    return _svg(fig, "Residue-level concepts: best F1 per concept", inputs, caption)
