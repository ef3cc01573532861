"""The explain stage end to end: real proteins and activations, the real anthropic SDK, and a local
fake Messages API whose replies are derived from the prompts (tests/fake_anthropic.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from tests.explain_data import (
    fit_topk_sae,
    go_names,
    load_test_corpus,
    residue_reps,
    write_activations,
)
from tests.fake_anthropic import FakeAnthropic, derive_predictions
from trainer.explain.client import ExplainAuthError
from trainer.explain.sampling import BinSpec, normalise, sample_feature
from trainer.explain.stage import ExplainConfig, run_explain_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(shared_dir: Path) -> SimpleNamespace:
    corpus = load_test_corpus(shared_dir, 240, max_len=300)
    reps = residue_reps(shared_dir, corpus.sequences)
    pooled = np.stack([r.mean(0) for r in reps])
    return SimpleNamespace(
        corpus=corpus,
        names=go_names(shared_dir, corpus),
        reps=reps,
        neurons=np.clip(pooled, 0, None),  # the seed's baseline: ReLU'd pooled neurons
        sae=fit_topk_sae(pooled, 384, 16),
        residue=np.stack([np.clip(r, 0, None).max(0) for r in reps]),
    )


def workdir(tmp: Path, real: SimpleNamespace) -> Path:
    write_activations(tmp, "sae", real.sae)
    write_activations(tmp, "neurons", real.neurons)
    write_activations(tmp, "res_neurons", real.residue, level="residue")
    return tmp


def cfg(**kw: Any) -> ExplainConfig:
    base: dict[str, Any] = dict(n_features=4, concurrency=2, backoff_s=0.01, batch_poll_s=0.01)
    return ExplainConfig(**{**base, **kw})


def records(wd: Path, name: str) -> list[dict[str, Any]]:
    lines = (wd / "explain" / name / "explanations.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run(
    wd: Path, real: SimpleNamespace, fake: FakeAnthropic, c: ExplainConfig, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = dict(dictionaries=["sae"], neurons="neurons")
    return run_explain_stage(
        wd,
        c,
        go_term_names=real.names,
        base_url=fake.base_url,
        corpus=real.corpus,
        **{**args, **kw},
    )


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-fake")
    return "sk-test-fake"


def test_sampling_follows_the_seed_protocol(real: SimpleNamespace) -> None:
    spec = BinSpec()
    j = int(np.argmax((real.neurons > 0).sum(0) * ((real.neurons == 0).sum(0) >= 15)))
    acts = normalise(real.neurons[:, j])
    s = sample_feature(j, acts, spec, np.random.default_rng([42, j]))
    assert s.skip_reason is None
    assert len(s.explain_rows) == 15 and len(s.test_rows) == 17
    assert sum(a > 0 for a in s.explain_acts) == 8 and sum(a > 0 for a in s.test_acts) == 9
    rows = s.explain_rows + s.test_rows
    assert len(set(rows)) == 32
    assert sum(acts[r] == 0 for r in rows) == 15
    top_bin = int((acts >= 0.8).sum())
    assert sum(acts[r] >= 0.8 for r in rows) >= min(6, top_bin)
    again = sample_feature(j, acts, spec, np.random.default_rng([42, j]))
    assert again.test_rows == s.test_rows
    # The same real column cut down to its 20 strongest proteins is skipped, with the reason.
    cut = np.where(acts >= np.sort(acts)[-20], acts, 0.0)
    skipped = sample_feature(j, cut, spec, np.random.default_rng(0))
    assert skipped.skip_reason == "too few active proteins: 20 < 34"


def test_explain_and_score_through_the_sdk(real: SimpleNamespace, tmp_path: Path, key: str) -> None:
    wd = workdir(tmp_path, real)
    with FakeAnthropic(key) as fake:
        result = run(wd, real, fake, cfg())
        bodies = {b["messages"][0]["content"]: b for b in fake.messages()}
        n_sent = len(fake.messages())
    assert result["status"] == "done" and result["requests"] == n_sent == 16
    corpus, names = real.corpus, real.names
    for name in ("sae", "neurons"):
        assert (wd / "explain" / name / "DONE").exists()
        scored = [r for r in records(wd, name) if r["status"] == "scored"]
        assert len(scored) == 4
        for rec in scored:
            body = bodies[rec["prompt"]]
            assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
            assert body["tool_choice"] == {"type": "tool", "name": "record_explanation"}
            # The explain prompt carries each explain protein's metadata, GO names and activation.
            for row, act in zip(rec["explain_rows"], rec["explain_activations"], strict=True):
                block = rec["prompt"].split(f"### {corpus.accessions[row]}\n")[1].split("###")[0]
                assert block.startswith(f"activation: {act:.2f}")
                assert f"gene: {corpus.genes[row]}" in block
                bp = sorted(corpus.go_bp[row] & names.keys(), key=lambda g: names[g].lower())
                for g in bp[:15]:  # named terms, alphabetically, up to the cap
                    assert f"{names[g]} ({g})" in block
                if len(corpus.go_bp[row]) > 15:
                    assert f"(+{len(corpus.go_bp[row]) - 15} more)" in block
            # The explanation names a GO term of a strongly active explain protein.
            term = re.search(r'"([^"]+)"', rec["text"]).group(1)  # type: ignore[union-attr]
            strong = [
                r
                for r, a in zip(rec["explain_rows"], rec["explain_activations"], strict=True)
                if a >= 0.5
            ]
            ids = set().union(
                *(corpus.go_bp[r] | corpus.go_mf[r] | corpus.go_cc[r] for r in strong)
            )
            assert term in {names.get(g) for g in ids}
            # The score prompt hides activations and lists exactly the test proteins.
            sp = rec["score_prompt"]
            assert "activation:" not in sp and rec["text"] in sp
            assert re.findall(r"^### (\S+)$", sp, re.M) == rec["test_accessions"]
            assert rec["predicted"] == [p["activation"] for p in derive_predictions(sp)]
            if rec["pearson_r"] is not None:
                r, p = stats.pearsonr(rec["predicted"], rec["actual"])
                assert rec["pearson_r"] == pytest.approx(r) and rec["p_value"] == pytest.approx(p)
    summary = json.loads((wd / "explain" / "sae" / "summary.json").read_text())
    assert summary["comparison"]["neurons"]["n_scored"] == 4
    assert result["usage"]["cache_read_input_tokens"] > 0 and result["usage"]["cost_usd"] > 0
    # Re-running costs nothing and writes the same records.
    before = records(wd, "sae")
    with FakeAnthropic(key) as fake:
        again = run(wd, real, fake, cfg())
        assert fake.log == []
    assert again["requests"] == 0 and records(wd, "sae") == before


def test_batches_give_the_same_results(real: SimpleNamespace, tmp_path: Path, key: str) -> None:
    sync_wd, batch_wd = workdir(tmp_path / "s", real), workdir(tmp_path / "b", real)
    with FakeAnthropic(key) as fake:
        run(sync_wd, real, fake, cfg(), neurons=None)
    with FakeAnthropic(key, polls_before_end=2) as fake:
        result = run(batch_wd, real, fake, cfg(use_batches=True), neurons=None)
        assert fake.messages() == [] and len(fake.batches) == 2  # one explain, one score batch
        polls = [e for e in fake.log if e["method"] == "GET" and not e["path"].endswith("results")]
        assert len(polls) >= 6
    assert result["usage"]["batch_requests"] == result["usage"]["requests"] == 8
    strip = ("text", "predicted", "pearson_r", "feature_index", "test_accessions")
    assert [{k: r.get(k) for k in strip} for r in records(batch_wd, "sae")] == [
        {k: r.get(k) for k in strip} for r in records(sync_wd, "sae")
    ]


def test_batch_resumes_by_stored_id(real: SimpleNamespace, tmp_path: Path, key: str) -> None:
    wd = workdir(tmp_path, real)
    import trainer.explain.batches as batches

    calls = {"n": 0}
    real_wait = batches._wait

    def interrupted_wait(*a: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        real_wait(*a, **kw)

    with FakeAnthropic(key) as fake:
        batches._wait = interrupted_wait  # type: ignore[assignment]
        try:
            with pytest.raises(KeyboardInterrupt):
                run(wd, real, fake, cfg(use_batches=True), neurons=None)
            assert (wd / "explain" / "sae" / "batches" / "explain" / "open_batch.json").exists()
            result = run(wd, real, fake, cfg(use_batches=True), neurons=None)
        finally:
            batches._wait = real_wait  # type: ignore[assignment]
        assert len(fake.batches) == 2  # the explain batch was picked up, not paid twice
    assert result["dictionaries"]["sae"]["n_scored"] == 4


def test_malformed_replies_are_retried_then_recorded(
    real: SimpleNamespace, tmp_path: Path, key: str
) -> None:
    wd = workdir(tmp_path / "a", real)
    c = cfg(n_features=2, concurrency=1)
    with FakeAnthropic(key) as fake:
        fake.faults = ["malformed", "text", "malformed"]
        run(wd, real, fake, c, neurons=None)
        assert len(fake.messages()) == 3 + 2
    recs = [r for r in records(wd, "sae") if r["status"] != "skipped"]
    assert recs[0]["status"] == "failed" and "explain: malformed reply" in recs[0]["reason"]
    assert "text" not in recs[0] and recs[1]["status"] == "scored"
    with FakeAnthropic(key) as fake:  # the failure is recorded: no new request
        run(wd, real, fake, c, neurons=None)
        assert fake.log == []
    with FakeAnthropic(key) as fake:  # unless asked to retry failures
        run(wd, real, fake, c.model_copy(update={"retry_failed": True}), neurons=None)
        assert len(fake.messages()) == 2
    assert (
        records(wd, "sae")[0]["status"] in ("scored",)
        or recs[0]["feature_index"] != records(wd, "sae")[0]["feature_index"]
    )
    wd2 = workdir(tmp_path / "b", real)
    with FakeAnthropic(key) as fake:
        fake.faults = ["malformed"]
        run(wd2, real, fake, c, neurons=None)
        assert len(fake.messages()) == 5
    assert all(r["status"] in ("scored", "skipped") for r in records(wd2, "sae"))


@pytest.mark.parametrize("fault", ["429", "500"])
def test_transient_errors_then_success(
    real: SimpleNamespace, tmp_path: Path, key: str, fault: str
) -> None:
    wd = workdir(tmp_path, real)
    c = cfg(n_features=1, concurrency=1, max_retries=1, outer_retries=1)
    with FakeAnthropic(key) as fake:
        fake.faults = [fault] * 3  # SDK retry once, then our backoff, then success
        result = run(wd, real, fake, c, neurons=None)
        assert len(fake.messages()) == 2 + 3
    assert result["requests"] == 2 + 1  # our own retry counts; the SDK's internal one does not
    assert result["dictionaries"]["sae"]["n_scored"] == 1


def test_bad_key_is_a_clear_error(
    real: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
    with (
        FakeAnthropic("sk-right") as fake,
        pytest.raises(ExplainAuthError, match="ANTHROPIC_API_KEY"),
    ):
        run(workdir(tmp_path, real), real, fake, cfg(), neurons=None)


def test_no_key_skips_cleanly(
    real: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    wd = workdir(tmp_path, real)
    with FakeAnthropic() as fake:
        result = run(wd, real, fake, cfg())
        assert fake.log == []
    assert result["status"] == "skipped" and "ANTHROPIC_API_KEY is not set" in result["reason"]
    assert not (wd / "explain").exists()


def test_interrupted_run_continues(real: SimpleNamespace, tmp_path: Path, key: str) -> None:
    full, cut = workdir(tmp_path / "full", real), workdir(tmp_path / "cut", real)
    c = cfg(concurrency=1)
    with FakeAnthropic(key) as fake:
        run(full, real, fake, c)
    with FakeAnthropic(key) as fake:
        first = run(cut, real, fake, c.model_copy(update={"budget_usd": 0.01}))
        n_first = len(fake.messages())
    assert first["status"] == "partial" and "budget" in first["reason"]
    assert not (cut / "explain" / "sae" / "DONE").exists()
    assert any(r["status"] == "pending" for r in records(cut, "sae") + records(cut, "neurons"))
    with FakeAnthropic(key) as fake:
        second = run(cut, real, fake, c)
        assert len(fake.messages()) == 16 - n_first  # only what was missing
    assert second["status"] == "done"
    for name in ("sae", "neurons"):
        assert records(cut, name) == records(full, name)


def test_residue_level_prompts_show_where_it_fires(
    real: SimpleNamespace, tmp_path: Path, key: str
) -> None:
    wd = workdir(tmp_path, real)

    def values(name: str, feature: int, row: int) -> np.ndarray:
        return np.clip(real.reps[row][:, feature], 0, None)

    with FakeAnthropic(key) as fake:
        run(
            wd,
            real,
            fake,
            cfg(n_features=2),
            dictionaries=["res_neurons"],
            neurons=None,
            residue_values=values,
        )
    for rec in [r for r in records(wd, "res_neurons") if r["status"] == "scored"]:
        assert "fires most at" not in rec["score_prompt"] and "residues" in rec["text"]
        for row, act in zip(rec["explain_rows"], rec["explain_activations"], strict=True):
            if act == 0:
                continue
            block = rec["prompt"].split(f"### {real.corpus.accessions[row]}\n")[1].split("###")[0]
            site = re.search(r"fires most at: ([A-Z])(\d+) in (\S+) \(([0-9.]+)\)", block)
            assert site is not None
            pos = int(site.group(2)) - 1
            assert real.corpus.sequences[row][pos] == site.group(1)
            assert site.group(4) == f"{act:.2f}"  # the strongest residue is the protein's max


def test_labels_from_real_go_enrichment(
    real: SimpleNamespace, tmp_path: Path, shared_dir: Path
) -> None:
    import gzip
    import shutil

    from goatools.obo_parser import GODag

    from trainer.explain.labels import GoHit, auto_labels, go_label, pfam_label

    obo = tmp_path / "go-basic.obo"
    with gzip.open(shared_dir / "data/go/go-basic.obo.gz", "rb") as src, obo.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    dag = GODag(str(obo), prt=None)
    c = real.corpus
    ann = [c.go_bp[i] | c.go_mf[i] | c.go_cc[i] for i in range(len(c.accessions))]
    big = int(np.argmax((real.sae > 0).sum(0)))
    study = np.flatnonzero(real.sae[:, big] > 0)
    n_pop, n_study = len(ann), len(study)
    hits = []
    for term in set().union(*ann):
        if term not in dag:
            continue
        k = sum(term in ann[i] for i in study)
        m = sum(term in a for a in ann)
        p = float(stats.hypergeom.sf(k - 1, n_pop, m, n_study)) if k else 1.0
        hits.append(
            GoHit(
                term,
                dag[term].name,
                dag[term].namespace[:1].upper(),
                dag[term].depth,
                p,
                (k / n_study) / (m / n_pop),
            )
        )
    sig = [h for h in hits if h.q_value < 0.05 and h.fold_enrichment >= 2.0]
    label = go_label(hits)
    if sig:
        assert label is not None and label.source == "auto:go"
        assert f"({max(sig, key=lambda h: (h.depth, -h.q_value)).go_id}," in label.text
    else:
        assert label is None
    # Pfam fallback: kinase domain shared by 3 of 4 top proteins wins; 1 of 4 is not dominant.
    assert (
        pfam_label([{"PF00069"}, {"PF00069", "PF07714"}, {"PF00069"}, set()]).text == "Pfam PF00069"
    )  # type: ignore[union-attr]
    assert pfam_label([{"PF00069"}, set(), set(), set()]) is None
    labels = auto_labels({big: hits}, {7: [{"PF00069"}, {"PF00069"}]})
    assert labels[7].source == "auto:pfam"
    assert (big in labels and labels[big].source == "auto:go") == bool(sig)
    # A deep term that is significant but barely enriched does not name the feature; a
    # shallower term with a real effect does, and weak terms alone give no GO label at all.
    weak = GoHit("GO:0007204", "positive regulation of cytosolic calcium ion concentration",
                 "BP", 9, 1e-40, 1.2, is_most_specific=True)  # fmt: skip
    strong = GoHit("GO:0004930", "G protein-coupled receptor activity", "MF", 4, 1e-6, 3.1)
    assert "(GO:0004930," in go_label([weak, strong]).text  # type: ignore[union-attr]
    assert go_label([weak]) is None and go_label([weak], min_fold=1.0) is not None
    # A term that protein length explains (length-stratified q >= alpha) names nothing; one
    # that survives the stratified test does, and its evidence says so.
    deep = GoHit("GO:0004930", "G protein-coupled receptor activity", "MF", 4, 1e-6, 3.1,
                 q_length=0.4)  # fmt: skip
    kept = GoHit("GO:0005886", "plasma membrane", "CC", 3, 1e-5, 2.5, q_length=1e-3)
    label = go_label([deep, kept])
    assert label is not None and "(GO:0005886," in label.text
    assert "length-adjusted q=0.001" in label.evidence
    assert go_label([deep]) is None


def test_explanations_reach_the_store(real: SimpleNamespace, tmp_path: Path, key: str) -> None:
    from sqlalchemy import func, select

    from app.store import migrate
    from app.store.engine import make_engine, session_factory
    from app.store.publish import publish_run
    from app.store.schema import AnalysisSummary, Explanation, ExplanationScore, Feature, Run, Sae
    from trainer.explain.labels import AutoLabel
    from trainer.explain.store_load import load_auto_labels, load_explanations

    wd = workdir(tmp_path, real)
    with FakeAnthropic(key) as fake:
        run(wd, real, fake, cfg(n_features=3))
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)

    def load(session: Any, run_row: Run) -> None:
        for name, acts in (("sae", real.sae), ("neurons", real.neurons)):
            kind = "topk" if name == "sae" else "neurons"
            sae = Sae(
                run_id=run_row.id,
                name=name,
                kind=kind,
                level="protein",
                layer=3,
                d_in=192,
                n_latents=acts.shape[1],
            )
            session.add(sae)
            session.flush()
            feats = [
                Feature(sae_id=sae.id, index=j, max_activation=float(acts[:, j].max()))
                for j in range(acts.shape[1])
            ]
            session.add_all(feats)
            session.flush()
            ids = {f.index: f.id for f in feats}
            load_explanations(session, wd, name, sae.id, ids)
            load_auto_labels(
                session,
                {0: AutoLabel("nucleus (GO:0005634, cellular component)", "auto:go", "")},
                ids,
            )

    publish_run(
        engine,
        Run(
            name="demo",
            base_model="esm2_t4_2M_sprot14mini",
            checkpoint_sha256="0" * 64,
            layer=3,
            corpus="human",
        ),
        load,
    )
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Explanation)) == 6
        assert s.scalar(select(func.count()).select_from(ExplanationScore)) == 6
        scored = s.scalars(select(Feature).where(Feature.explanation_score.is_not(None))).all()
        assert len(scored) == 6
        payload = s.scalars(select(AnalysisSummary.payload)).all()
        assert any(p.get("comparison", {}).get("neurons") for p in payload)
        labelled = s.scalars(select(Feature).where(Feature.auto_label_source == "auto:go")).all()
        assert len(labelled) == 2
        e = s.scalars(select(Explanation)).first()
        assert e is not None and e.prompt and len(e.prompt_hash) == 64
    engine.dispose()
