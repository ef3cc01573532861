"""Gather one published run's findings from the store into the dicts ``app.findings.plots`` takes.

Everything comes from what ``publish`` loaded: ``Sae`` metrics (fidelity), ``AnalysisSummary``
payloads of kinds ``go`` and ``concepts`` (the stages' ``summary.json``), ``GoEnrichment`` rows
(fold enrichment of significant hits) and ``ExplanationScore`` rows (Pearson r per feature).
Each dictionary is tagged ``features`` (SAE/transcoder), ``neurons`` (the ESM2 baseline) or
``control``, and every (dictionary, latent index) is mapped to its ``Feature.id`` so figures link
to the features behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.go import go_alpha
from app.queries.scope import published_run
from app.stage_summaries import GoSummary
from app.store.schema import (
    AnalysisSummary,
    Explanation,
    ExplanationScore,
    Feature,
    GoEnrichment,
    Run,
    Sae,
)

Summary = dict[str, Any]
PEARSON_METHODS = ("pearson", "pearson_r")  # publish.py and the explain stage's loader


def dictionary_kind(sae: Sae) -> str:
    """``control``, ``neurons`` or ``features``: the colour group of a dictionary in figures."""
    if sae.is_control:
        return "control"
    return "neurons" if sae.kind == "neurons" else "features"


@dataclass
class RunFindings:
    """One run's figure inputs, ready for the ``plot_*`` functions."""

    run: Run
    saes: list[Sae]
    fidelity: list[Summary] = field(default_factory=list)
    go: list[Summary] = field(default_factory=list)
    fold_enrichment: list[Summary] = field(default_factory=list)
    explanations: list[Summary] = field(default_factory=list)
    concepts: list[Summary] = field(default_factory=list)
    # (dictionary name, latent index) -> Feature.id, for the features figures point at
    feature_ids: dict[tuple[str, int], int] = field(default_factory=dict)
    # dictionary name -> its features with the most significant GO terms: (id, index, n hits)
    go_top_features: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    @property
    def sae_ids(self) -> dict[str, int]:
        return {s.name: s.id for s in self.saes}

    def feature_url(self, dictionary: str, index: int | None) -> str:
        """The page of a feature, or of the dictionary's feature list when ``index`` is None."""
        if index is not None and (dictionary, index) in self.feature_ids:
            return f"/features/{self.feature_ids[(dictionary, index)]}"
        name = dictionary.removesuffix(" (permuted labels)")
        return f"/saes/{self.sae_ids[name]}/features" if name in self.sae_ids else "#"


def _summaries(session: Session, sae_ids: list[int], kind: str) -> dict[int, Summary]:
    rows = session.execute(
        select(AnalysisSummary.sae_id, AnalysisSummary.payload).where(
            AnalysisSummary.sae_id.in_(sae_ids), AnalysisSummary.kind == kind
        )
    ).all()
    return {sae_id: dict(payload or {}) for sae_id, payload in rows}


def _fidelity(saes: list[Sae]) -> list[Summary]:
    """Every SAE/transcoder (and control); raw neurons reconstruct trivially, so they are left out."""
    return [
        {
            "dictionary": s.name,
            "kind": dictionary_kind(s),
            "fve": s.fve,
            "l0": s.l0,
            "dead_fraction": s.dead_fraction,
            "loss_recovered": s.loss_recovered,
            # the cross-entropies loss recovered is a ratio of, and what the ablation was
            **{k: (s.metrics or {}).get(k) for k in ("ce_clean", "ce_zero", "ce_spliced")},
            "ablation": (s.metrics or {}).get("loss_recovered_ablation") or "layer zeroed",
        }
        for s in saes
        if s.kind != "neurons"
    ]


def _go(session: Session, saes: list[Sae]) -> tuple[list[Summary], list[Summary]]:
    payloads = _summaries(session, [s.id for s in saes], "go")
    go: list[Summary] = []
    fold: list[Summary] = []
    for s in saes:
        p = GoSummary.from_payload(payloads.get(s.id))
        if p is None:
            continue
        go.append({**p.dump(), "dictionary": s.name, "kind": dictionary_kind(s)})
        perm = p.permutation_control
        if perm is not None and perm.mean_pct_features_with_hit_bh is not None:
            adjusted = perm.mean_pct_features_with_hit_length_bh
            go.append(
                {
                    "dictionary": f"{s.name} (permuted labels)",
                    "kind": "control",
                    "bh": {"pct_features_with_hit": perm.mean_pct_features_with_hit_bh},
                    "bonferroni": {
                        "pct_features_with_hit": perm.mean_pct_features_with_hit_bonferroni or 0.0
                    },
                    **(
                        {"length_bh": {"pct_features_with_hit": adjusted}}
                        if adjusted is not None
                        else {}
                    ),
                }
            )
        alpha = go_alpha(p)
        values = session.scalars(
            select(GoEnrichment.fold_enrichment).where(
                GoEnrichment.sae_id == s.id, GoEnrichment.q_value < alpha
            )
        ).all()
        fold.append({"dictionary": s.name, "kind": dictionary_kind(s), "fold_enrichment": values})
    return go, fold


def _explanations(session: Session, saes: list[Sae]) -> tuple[list[Summary], dict[int, int]]:
    """Pearson r per scored feature (undefined r counts as 0, as the explain stage counts it)."""
    rows = session.execute(
        select(Feature.sae_id, Feature.index, Feature.id, ExplanationScore.value)
        .join(Explanation, Explanation.feature_id == Feature.id)
        .join(ExplanationScore, ExplanationScore.explanation_id == Explanation.id)
        .where(
            Feature.sae_id.in_([s.id for s in saes]),
            ExplanationScore.method.in_(PEARSON_METHODS),
        )
    ).all()
    by_sae: dict[int, list[tuple[int, int, float]]] = {}
    for sae_id, index, fid, value in rows:
        by_sae.setdefault(sae_id, []).append((index, fid, float(value or 0.0)))
    out: list[Summary] = []
    best: dict[int, int] = {}
    for s in saes:
        scored = by_sae.get(s.id)
        if not scored:
            continue
        top = max(scored, key=lambda t: t[2])
        best[s.id] = top[0]
        out.append(
            {
                "dictionary": s.name,
                "kind": dictionary_kind(s),
                "pearson_r": [r for _, _, r in scored],
                "best_feature": top[0],
            }
        )
    return out, best


def _concepts(session: Session, saes: list[Sae]) -> list[Summary]:
    payloads = _summaries(session, [s.id for s in saes], "concepts")
    return [
        {**payloads[s.id], "dictionary": s.name, "kind": dictionary_kind(s)}
        for s in saes
        if s.id in payloads and payloads[s.id].get("best_per_concept")
    ]


def _feature_ids(
    session: Session, saes: list[Sae], wanted: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    sae_ids = {s.name: s.id for s in saes}
    out: dict[tuple[str, int], int] = {}
    for name in {n for n, _ in wanted}:
        indices = [i for n, i in wanted if n == name]
        for index, fid in session.execute(
            select(Feature.index, Feature.id).where(
                Feature.sae_id == sae_ids[name], Feature.index.in_(indices)
            )
        ):
            out[(name, int(index))] = int(fid)
    return out


def _go_top_features(
    session: Session, saes: list[Sae], go: list[Summary], n: int = 5
) -> dict[str, list[tuple[int, int, int]]]:
    names = {g["dictionary"] for g in go}
    out: dict[str, list[tuple[int, int, int]]] = {}
    for s in saes:
        if s.name not in names:
            continue
        rows = session.execute(
            select(Feature.id, Feature.index, Feature.n_go_hits)
            .where(Feature.sae_id == s.id, Feature.n_go_hits > 0)
            .order_by(Feature.n_go_hits.desc(), Feature.index)
            .limit(n)
        ).all()
        out[s.name] = [(int(a), int(b), int(c)) for a, b, c in rows]
    return out


def gather_findings(session: Session, run_id: int) -> RunFindings | None:
    """Every figure input of a published run, or None when no such run is published."""
    run = published_run(session, run_id)
    if run is None:
        return None
    saes = list(session.scalars(select(Sae).where(Sae.run_id == run.id).order_by(Sae.id)).all())
    go, fold = _go(session, saes)
    explanations, _ = _explanations(session, saes)
    concepts = _concepts(session, saes)
    wanted = {(c["dictionary"], int(b["feature"])) for c in concepts for b in c["best_per_concept"]}
    wanted |= {(e["dictionary"], int(e["best_feature"])) for e in explanations}
    return RunFindings(
        run=run,
        saes=saes,
        fidelity=_fidelity(saes),
        go=go,
        fold_enrichment=fold,
        explanations=explanations,
        concepts=concepts,
        feature_ids=_feature_ids(session, saes, wanted),
        go_top_features=_go_top_features(session, saes, go),
    )
