"""The Findings figures of a run: SVG plus a caption stating its inputs and links to its features.

Rendering is matplotlib (a few hundred ms per figure), so each run's figures are cached in
process: a published run never changes (re-publishing makes a new run row, and the key includes
``published_at``). Matplotlib's rc state is global, so rendering is serialised by a lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.findings import plots
from app.queries.findings import RunFindings, gather_findings
from app.store.schema import Run


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class FigureOut:
    """One rendered figure: ``svg`` is the full document, ``inline`` the bare ``<svg>`` element."""

    key: str
    title: str
    svg: str
    caption: str
    links: tuple[Link, ...] = ()

    @property
    def inline(self) -> str:
        return plots.inline_svg(self.svg)


@dataclass
class RenderedFindings:
    figures: list[FigureOut]
    missing: list[str] = field(default_factory=list)  # figures with no data in this run, and why
    seconds: float = 0.0


_CACHE: dict[tuple[str, int, str], RenderedFindings] = {}
_LOCK = threading.Lock()


def _inputs(f: RunFindings, corpus: str) -> plots.FigureInputs:
    """What every figure of the run states it was computed from."""
    return plots.FigureInputs(f.run.name, f.run.base_model, corpus)


def corpus_text(run: Run) -> str:
    """The run's corpus and its size, without repeating a count the corpus name already has."""
    n = f"{run.n_proteins} proteins"
    return run.corpus if n in run.corpus else f"{run.corpus} ({n})"


def _fmt_sizes(sizes: dict[str, Any]) -> str:
    return "/".join(f"{k} {v}" for k, v in sizes.items())


def _dict_links(f: RunFindings, names: list[str]) -> list[Link]:
    return [Link(f"{n}: all features", f.feature_url(n, None)) for n in names if n in f.sae_ids]


def _fidelity(f: RunFindings) -> FigureOut:
    corpus = f"{corpus_text(f.run)}; {len(f.fidelity)} dictionaries"
    svg = plots.plot_sae_fidelity(f.fidelity, _inputs(f, corpus), link=f.feature_url)
    names = [m["dictionary"] for m in f.fidelity]
    gaps = [
        f"{m['dictionary']} {gap:.3g} ({m.get('ablation', 'layer zeroed')})"
        for m in f.fidelity
        if (gap := plots.loss_gap(m)) is not None
    ]
    caption = (
        f"FVE, L0, dead fraction and LM loss recovered of each SAE/transcoder of run "
        f"{f.run.name} (model {f.run.base_model}, layer {f.run.layer}), measured on held-out "
        f"data at training time; corpus {corpus_text(f.run)}. Loss recovered is "
        "(CE ablated − CE spliced) / (CE ablated − CE clean) of the masked-LM cross-entropy: "
        "1 = splicing the dictionary in costs nothing, 0 = as bad as the ablation, below 0 = "
        "worse; a small gap makes the ratio large for a small loss."
        + (f" Gap CE ablated − CE clean, nats: {'; '.join(gaps)}." if gaps else "")
    )
    return FigureOut("fidelity", "SAE fidelity", svg, caption, tuple(_dict_links(f, names)))


def _go_caption(f: RunFindings) -> str:
    """Features and tests per dictionary; the annotated population once when every dictionary
    shares it (they do within a run, and 14 repeats made the caption a wall of numbers)."""
    measured = [g for g in f.go if "n_features" in g]
    pops = [_fmt_sizes(g.get("population_size") or {}) or "?" for g in measured]
    shared = len(set(pops)) == 1
    parts = [
        f"{g['dictionary']}: {g['n_features']} features, {g.get('n_tests', '?')} tests"
        + ("" if shared else f", annotated proteins {pop}")
        for g, pop in zip(measured, pops, strict=True)
    ]
    common = f" Annotated proteins (population) {pops[0]}." if shared and pops else ""
    return (
        f"Run {f.run.name}, model {f.run.base_model}, corpus {corpus_text(f.run)}.{common} "
        + "; ".join(parts)
        + "."
    )


def _go_links(f: RunFindings) -> list[Link]:
    links = []
    for name, top in f.go_top_features.items():
        links += [Link(f"{name} #{i} ({n} terms)", f"/features/{fid}") for fid, i, n in top]
    return links


def _go_figures(f: RunFindings) -> list[FigureOut]:
    own = [g for g in f.go if "hits_per_level" in g]
    # The figure's title line counts the dictionaries by size; the caption below names each.
    sizes = Counter(int(g["n_features"]) for g in own if "n_features" in g)
    corpus = f"{f.run.n_proteins} proteins; {len(own)} dictionaries: " + ", ".join(
        f"{n} × {size} features" for size, n in sorted(sizes.items(), reverse=True)
    )
    inputs = _inputs(f, corpus)
    caption = _go_caption(f)
    links = tuple(_go_links(f) + _dict_links(f, [g["dictionary"] for g in own]))
    out = [
        FigureOut(
            "go_hit_rates",
            "GO: features with a significant term",
            plots.plot_go_hit_rates(f.go, inputs, link=f.feature_url),
            caption + " Controls: the same features against length-matched permuted labels.",
            links,
        ),
        FigureOut(
            "go_levels",
            "GO hits per level",
            plots.plot_go_hits_per_level(own, inputs),
            caption + " Level: shortest is_a path to the namespace root.",
            links,
        ),
    ]
    n_hits = ", ".join(f"{s['dictionary']} {len(s['fold_enrichment'])}" for s in f.fold_enrichment)
    out.append(
        FigureOut(
            "go_fold",
            "GO fold enrichment",
            plots.plot_fold_enrichment(f.fold_enrichment, inputs),
            caption + f" Significant (BH) hits: {n_hits}.",
            links,
        )
    )
    return out


def _explanations(f: RunFindings) -> FigureOut:
    sizes = ", ".join(f"{e['dictionary']} {len(e['pearson_r'])} scored" for e in f.explanations)
    svg = plots.plot_explanation_r(
        f.explanations, _inputs(f, f"{f.run.n_proteins} proteins; {sizes}")
    )
    links = [
        Link(
            f"{e['dictionary']}: best-scored feature",
            f.feature_url(e["dictionary"], e["best_feature"]),
        )
        for e in f.explanations
    ]
    caption = (
        f"Pearson r between the activations predicted from each feature's explanation and the "
        f"true activations on held-out proteins. Run {f.run.name}, model {f.run.base_model}, "
        f"corpus {corpus_text(f.run)}; {sizes}."
    )
    return FigureOut("explanations", "Explanations: Pearson r", svg, caption, tuple(links))


def _concepts(f: RunFindings) -> FigureOut:
    first = f.concepts[0]
    corpus_split = first.get("corpus") or {}
    chains = {k: v.get("n_chains") for k, v in corpus_split.items()}
    residues = {k: v.get("n_residues") for k, v in corpus_split.items()}
    n_concepts = len({b["concept"] for c in f.concepts for b in c["best_per_concept"]})
    corpus = f"{n_concepts} concepts, chains {_fmt_sizes(chains)}"
    svg = plots.plot_concept_f1(
        f.concepts,
        _inputs(f, corpus),
        associated_f1=float(first.get("associated_f1", 0.5)),
        link=f.feature_url,
    )
    links = [
        Link(
            f"{c['dictionary']} · {b['concept']} · F1 {b['f1_test']:.2f}",
            f.feature_url(c["dictionary"], int(b["feature"])),
        )
        for c in f.concepts
        for b in sorted(c["best_per_concept"], key=lambda b: -b["f1_test"])
    ]
    links += [Link(f"concept {n}", f"/concepts/{n}") for n in sorted(
        {b["concept"] for c in f.concepts for b in c["best_per_concept"]})]  # fmt: skip
    caption = (
        f"Best feature per residue-level concept (feature and threshold chosen on train chains, "
        f"F1 on test chains). Run {f.run.name}, model {f.run.base_model}; labelled chains "
        f"{_fmt_sizes(chains)}, residues {_fmt_sizes(residues)}; {n_concepts} concepts."
    )
    return FigureOut("concepts", "Residue-level concepts", svg, caption, tuple(links))


def render_findings(f: RunFindings) -> RenderedFindings:
    """Every figure the run has data for; ``missing`` names the others and why."""
    t0 = time.perf_counter()
    figures: list[FigureOut] = []
    missing: list[str] = []
    steps: list[tuple[bool, Callable[[], list[FigureOut]], str]] = [
        (bool(f.fidelity), lambda: [_fidelity(f)], "SAE fidelity: no SAE or transcoder in this run"),
        (bool(f.go), lambda: _go_figures(f), "GO: no GO summary in this run"),
        (bool(f.explanations), lambda: [_explanations(f)], "Explanations: none scored in this run"),
        (bool(f.concepts), lambda: [_concepts(f)], "Concepts: no concept alignment in this run"),
    ]  # fmt: skip
    for present, build, why in steps:
        if present:
            figures += build()
        else:
            missing.append(why)
    return RenderedFindings(figures, missing, time.perf_counter() - t0)


def cached_findings(session: Session, store_key: str, run: Run) -> RenderedFindings:
    """The figures of a published ``run``, gathered and rendered once per (store, publication)."""
    published = run.published_at.isoformat() if run.published_at else ""
    key = (store_key, run.id, published)
    with _LOCK:
        if key not in _CACHE:
            found = gather_findings(session, run.id)
            if found is None:
                raise LookupError(f"run {run.id} is not published")
            _CACHE[key] = render_findings(found)
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
