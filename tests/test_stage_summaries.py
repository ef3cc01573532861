"""The stage summaries (``app.stage_summaries``) the trainer writes and the app reads: a summary
written by the tiny run's stages reads back through its model and writes again byte for byte,
the payloads the publisher stored read through the same models unchanged, and summaries from
before a field was recorded still read (the pages fall back as they did)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.domains import domain_control
from app.stage_summaries import (
    AnalysisSummaryDoc,
    ConceptsSummary,
    Document,
    DomainsSummary,
    GoSummary,
    WorklistSummary,
)
from app.store.engine import make_engine
from app.store.schema import AnalysisSummary
from tests.tiny_run import TinyRun
from trainer.layout import RunLayout

MODELS: dict[str, type[Document]] = {
    "analysis": AnalysisSummaryDoc,
    "go": GoSummary,
    "domains": DomainsSummary,
    "worklist": WorklistSummary,
    "concepts": ConceptsSummary,
}


def _summary_files(layout: RunLayout, kind: str, name: str) -> Path:
    return {
        "analysis": layout.analysis(name).summary,
        "go": layout.go_hits(name).summary,
        "domains": layout.domain_hits(name).summary,
        "worklist": layout.worklist(name).summary,
        "concepts": layout.concept_results(name).summary,
    }[kind]


def test_written_summaries_read_and_write_back_unchanged(tiny_run: TinyRun) -> None:
    layout = RunLayout(tiny_run.pipeline.workdir)
    names = sorted(p.name for p in (layout.workdir / "analysis").iterdir() if p.is_dir())
    seen = set()
    for kind, model in MODELS.items():
        for name in names:
            path = _summary_files(layout, kind, name)
            if not path.exists():
                continue
            text = path.read_text()
            indent = 1 if kind == "concepts" else 2  # as the concepts stage writes it
            assert model.read(path).to_json(indent) == text, path
            seen.add(kind)
    assert seen == set(MODELS)  # the tiny run has every stage


def test_stored_payloads_read_through_the_models_unchanged(tiny_run: TinyRun) -> None:
    with Session(make_engine(tiny_run.url)) as session:
        rows = session.execute(select(AnalysisSummary.kind, AnalysisSummary.payload)).all()
    kinds = set()
    for kind, payload in rows:
        if kind in MODELS:
            document = MODELS[kind].from_payload(payload)
            assert document is not None and document.dump() == payload
            assert list(document.dump()) == list(payload)  # and in the writer's order
            kinds.add(kind)
    assert kinds == set(MODELS)
    concepts = [ConceptsSummary.from_payload(p) for k, p in rows if k == "concepts"]
    assert any(c is not None and c.best_per_concept for c in concepts)


def test_summaries_from_before_a_field_still_read() -> None:
    analysis = AnalysisSummaryDoc.from_payload({"n_proteins": 3, "n_latents": 4})
    assert analysis is not None and analysis.aa_profile is None
    profile = AnalysisSummaryDoc.model_validate(
        {"n_proteins": 3, "n_latents": 4, "aa_profile": {"alphabet": "ACD"}}
    ).aa_profile
    assert profile is not None and profile.basis == "corpus" and profile.background is None
    assert "basis" not in profile.dump()  # a default is read, never written
    concepts = ConceptsSummary.model_validate(
        {"n_concepts_associated": 0, "n_concepts_evaluated": 1, "best_f1_distribution": {},
         "best_per_concept": [{"concept": "c", "feature": 2, "f1_train": 0.5, "f1_test": 0.4}]}
    )  # fmt: skip
    best = concepts.best_for("c")
    assert best is not None and best.f1_fire_everywhere_test is None
    assert concepts.best_for("other") is None
    assert domain_control(DomainsSummary.from_payload({"alpha": 0.05})) is None
    control = domain_control(DomainsSummary.model_validate({"bh": {"pct_features_with_hit": 12.5}}))
    assert control is not None and control.pct_features_with_hit == 12.5
    assert control.pct_features_with_hit_shuffled is None
    assert control.pct_features_with_hit_random_init is None
    assert control.pct_features_with_hit_length_adjusted is None
    assert control.population_size == 0 and control.families_tested == {}
