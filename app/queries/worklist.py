"""Missing-annotation worklists (``go_worklist``): per feature and per GO term, with their evidence.

A candidate is a human protein the feature is active on that lacked the term in Swiss-Prot 2014
(after propagation); the lists were built from the 2014 annotations only, and ``confirmed`` says
whether the 2022 snapshot added the term (or a descendant) and under which evidence group.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import Session

from app.queries.errors import NotFound
from app.stage_summaries import WorklistSummary
from app.store.schema import (
    AnalysisSummary,
    Feature,
    GoEnrichment,
    GoTerm,
    GoWorklistCandidate,
    Protein,
    Sae,
)

CONFIRMED_MEANING = (
    "what the 2022 snapshot (org.Hs.eg.db 2022-09) says: the strongest evidence group that added "
    "the term or a descendant (experimental: EXP/IDA/IPI/IMP/IGI/IEP/HTP/HDA/HMP/HGI/HEP; "
    "curated: ISS/ISO/ISA/ISM/IGC/RCA/TAS/NAS/IC; electronic: IEA/IBA); null = not gained"
)
BASELINE_MEANING = (
    "share of all human proteins lacking the term in 2014, in this protein's length bin, that "
    "gained it by 2022 (what a random length-matched protein would score)"
)


class WorklistCandidate(BaseModel):
    rank: int
    accession: str
    protein_name: str | None
    gene: str | None
    length: int
    activation: float
    confirmed: str | None
    baseline_rate: float


class WorklistEvidence(BaseModel):
    """The GO hit that makes the list (strict protocol)."""

    shared: int  # annotated proteins among the feature's active ones
    study_size: int
    fold_enrichment: float
    q_value: float | None
    q_length: float | None


class TermWorklist(BaseModel):
    sae_id: int
    sae_name: str
    is_control: bool
    feature_id: int
    feature_index: int
    go_id: str
    go_name: str
    namespace: str
    evidence: WorklistEvidence | None
    n_candidates: int
    n_confirmed: int
    candidates: list[WorklistCandidate]


class FeatureWorklist(BaseModel):
    feature_id: int
    sae_id: int
    statement: str | None
    confirmed_meaning: str = CONFIRMED_MEANING
    baseline_meaning: str = BASELINE_MEANING
    lists: list[TermWorklist]


class GoWorklist(BaseModel):
    go_id: str
    name: str
    confirmed_meaning: str = CONFIRMED_MEANING
    baseline_meaning: str = BASELINE_MEANING
    lists: list[TermWorklist]


def worklist_summaries(session: Session, sae_ids: list[int]) -> dict[int, WorklistSummary]:
    """Each dictionary's worklist summary (the trainer's ``worklist/{name}/summary.json``)."""
    rows = session.execute(
        select(AnalysisSummary.sae_id, AnalysisSummary.payload).where(
            AnalysisSummary.sae_id.in_(sae_ids), AnalysisSummary.kind == "worklist"
        )
    )
    return {sae_id: WorklistSummary.model_validate(payload) for sae_id, payload in rows}


def _lists(
    session: Session, where: Any, limit: int | None, detailed: int | None = None
) -> list[TermWorklist]:
    """The (feature, term) lists matching ``where`` (a condition on GoWorklistCandidate), each
    with its counts and its first ``limit`` candidates by rank; with ``detailed``, only the
    first that many lists get candidates (a page shows those and counts the rest). Counted and
    cut in SQL, reading only the columns shown: a broad term has tens of thousands of
    candidates."""
    cand = GoWorklistCandidate
    counts = (
        select(
            cand.feature_id,
            cand.go_id,
            cand.sae_id,
            func.count().label("n"),
            func.count(cand.confirmed).label("n_confirmed"),
        )
        .where(where)
        .group_by(cand.feature_id, cand.go_id, cand.sae_id)
        .subquery()
    )  # fmt: skip  (counted before the joins: one row per list, not per candidate)
    heads = session.execute(
        select(counts.c.feature_id, counts.c.go_id, Sae.id, Sae.name, Sae.is_control,
               Feature.index, GoTerm.name, GoTerm.namespace, counts.c.n, counts.c.n_confirmed)
        .join(Feature, Feature.id == counts.c.feature_id)
        .join(Sae, Sae.id == counts.c.sae_id)
        .join(GoTerm, GoTerm.id == counts.c.go_id)
        .order_by(Sae.id, Feature.index, counts.c.go_id)
    ).all()  # fmt: skip
    lists: dict[tuple[int, str], TermWorklist] = {}
    for fid, go_id, sae_id, sae_name, control, index, name, namespace, n, confirmed in heads:
        lists[(fid, go_id)] = TermWorklist(
            sae_id=sae_id, sae_name=sae_name, is_control=control, feature_id=fid,
            feature_index=index, go_id=go_id, go_name=name, namespace=namespace, evidence=None,
            n_candidates=n, n_confirmed=confirmed, candidates=[],
        )  # fmt: skip
    if detailed is not None:
        keys = list(lists)[:detailed]
        where = or_(*(and_(cand.feature_id == f, cand.go_id == g) for f, g in keys), false())
    shown = select(cand.id).where(where)
    if limit is not None:
        nth = func.row_number().over(partition_by=(cand.feature_id, cand.go_id), order_by=cand.rank)
        ranked = select(cand.id, nth.label("nth")).where(where).subquery()
        shown = select(ranked.c.id).where(ranked.c.nth <= limit)
    rows = session.execute(
        select(cand.feature_id, cand.go_id, cand.rank, Protein.accession, Protein.name,
               Protein.gene, Protein.length, cand.activation, cand.confirmed, cand.baseline_rate)
        .join(Protein, Protein.id == cand.protein_id)
        .where(cand.id.in_(shown))
        .order_by(cand.feature_id, cand.go_id, cand.rank)
    ).all()  # fmt: skip
    for row in rows:
        lists[(row[0], row[1])].candidates.append(WorklistCandidate(
            rank=row.rank, accession=row.accession, protein_name=row.name, gene=row.gene,
            length=row.length, activation=row.activation, confirmed=row.confirmed,
            baseline_rate=row.baseline_rate,
        ))  # fmt: skip
    _attach_evidence(session, list(lists.values()))
    return list(lists.values())


def _attach_evidence(session: Session, lists: list[TermWorklist]) -> None:
    """Each list's GO hit (strict protocol): the hits of these features on these terms only."""
    if not lists:
        return
    hit = GoEnrichment
    found = session.execute(
        select(hit.feature_id, hit.go_id, hit.study_hits, hit.study_size, hit.fold_enrichment,
               hit.q_value, hit.q_length)
        .where(hit.feature_id.in_({item.feature_id for item in lists}),
               hit.go_id.in_({item.go_id for item in lists}), hit.protocol == "strict")
    ).all()  # fmt: skip
    by_key = {(fid, go_id): rest for fid, go_id, *rest in found}
    for item in lists:
        evidence = by_key.get((item.feature_id, item.go_id))
        if evidence is not None:
            shared, size, fold, q, q_length = evidence
            item.evidence = WorklistEvidence(
                shared=shared, study_size=size, fold_enrichment=fold, q_value=q, q_length=q_length
            )


def feature_worklist(
    session: Session, feature_id: int, limit: int | None = None
) -> FeatureWorklist:
    """Every list of one feature (``limit`` candidates shown per list; None: all)."""
    feature = session.get(Feature, feature_id)
    if feature is None:
        raise NotFound(f"feature {feature_id} not found")
    summary = worklist_summaries(session, [feature.sae_id]).get(feature.sae_id)
    lists = _lists(session, GoWorklistCandidate.feature_id == feature_id, limit)
    lists.sort(key=lambda t: (-(t.evidence.fold_enrichment if t.evidence else 0), t.go_id))
    statement = summary.statement if summary is not None else None
    return FeatureWorklist(feature_id=feature_id, sae_id=feature.sae_id, statement=statement,
                           lists=lists)  # fmt: skip


def go_worklist(
    session: Session, go_id: str, limit: int | None = None, detailed: int | None = None
) -> GoWorklist:
    """Every feature's list for one GO term (``limit`` candidates per list; None: all), in
    dictionary and feature order; with ``detailed``, candidates for the first that many lists
    only (a page's tables; the rest are counted)."""
    term = session.get(GoTerm, go_id)
    if term is None:
        raise NotFound(f"GO term {go_id} not found")
    lists = _lists(session, GoWorklistCandidate.go_id == go_id, limit, detailed)
    return GoWorklist(go_id=go_id, name=term.name, lists=lists)


CSV_COLUMNS = (
    "sae", "feature_index", "go_id", "go_name", "rank", "accession", "gene", "protein_name",
    "length", "activation", "shared", "study_size", "fold_enrichment", "q_value", "q_length",
    "confirmed_2022", "baseline_rate",
)  # fmt: skip


def csv_rows(lists: list[TermWorklist]) -> list[list[Any]]:
    """One row per candidate, with its list's evidence."""
    out: list[list[Any]] = []
    for item in lists:
        ev = item.evidence
        for c in item.candidates:
            out.append([
                item.sae_name, item.feature_index, item.go_id, item.go_name, c.rank, c.accession,
                c.gene or "", c.protein_name or "", c.length, f"{c.activation:.6g}",
                ev.shared if ev else "", ev.study_size if ev else "",
                f"{ev.fold_enrichment:.4g}" if ev else "",
                f"{ev.q_value:.3g}" if ev and ev.q_value is not None else "",
                f"{ev.q_length:.3g}" if ev and ev.q_length is not None else "",
                c.confirmed or "", f"{c.baseline_rate:.4f}",
            ])  # fmt: skip
    return out
