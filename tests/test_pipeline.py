"""The whole trainer on a tiny real run: every stage, then the published run in the store.

Real proteins and structures from ../shared, the real mini ESM2 model, GO from go-basic.obo,
real binding-site labels, and the real anthropic SDK against the local fake Messages API.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from app.settings import Settings
from app.store import migrate
from app.store.codec import decode_values
from app.store.engine import make_engine, session_factory
from app.store.schema import (
    AnalysisSummary,
    ConceptAlignment,
    ConceptExample,
    Explanation,
    Feature,
    FeatureNeighbor,
    GoEnrichment,
    GoProtocol,
    Protein,
    Run,
    Sae,
    Structure,
    TopExample,
)
from app.structure_coverage import best_chain, coverage
from tests.tiny_run import CONFIG, TinyRun
from trainer.config import ConfigError, load_config
from trainer.embedding_store import EmbeddingStore
from trainer.pipeline import RANDOM_SUBDIR, Pipeline


def test_run_is_published_with_every_dictionary(tiny_run: TinyRun) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        run = session.get(Run, tiny_run.run_id)
        assert run is not None and run.status == "published"
        # The hash of the checkpoint actually loaded, recomputed here from the file.
        checkpoint = Path(tiny_run.pipeline.cfg.embed.model)
        assert run.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        written = json.loads((tiny_run.pipeline.workdir / "config.json").read_text())
        assert written == run.config == tiny_run.pipeline.cfg.model_dump(mode="json")
        saes = {s.name: s for s in session.scalars(select(Sae).where(Sae.run_id == run.id))}
        assert set(saes) == {
            "L3-protein-topk", "L3-residue-topk", "L3to4-protein-transcoder",
            "L3-protein-topk-randinit", "L3-protein-neurons", "L3-residue-neurons",
        }  # fmt: skip
        topk = saes["L3-protein-topk"]
        assert topk.fve is not None and topk.fve > 0.5  # learned, well above predicting the mean
        assert topk.l0 is not None and topk.l0 <= 16.0 + 1e-6
        residue = saes["L3-residue-topk"]
        assert residue.fve is not None and residue.fve > 0.5
        for sae in (topk, residue):
            assert sae.loss_recovered is not None and -1.0 < sae.loss_recovered <= 1.0
            assert sae.metrics["ce_zero"] > sae.metrics["ce_clean"]
        # A pooled transcoder spliced in for block 3 at every residue: out of its training
        # distribution, so any value, but measured against skipping the block.
        transcoder = saes["L3to4-protein-transcoder"]
        assert transcoder.metrics["loss_recovered_ablation"] == "blocks skipped"
        assert transcoder.loss_recovered is not None and math.isfinite(transcoder.loss_recovered)
        ce = transcoder.metrics
        assert ce["ce_zero"] != ce["ce_clean"] and ce["ce_spliced"] != ce["ce_clean"]
        assert ce["loss_recovered"] == pytest.approx(
            (ce["ce_zero"] - ce["ce_spliced"]) / (ce["ce_zero"] - ce["ce_clean"])
        )
        assert saes["L3-protein-topk-randinit"].is_control
        assert saes["L3-protein-topk-randinit"].control_of == "L3-protein-topk"
        for sae in saes.values():
            n = session.scalar(
                select(func.count()).select_from(Feature).where(Feature.sae_id == sae.id)
            )
            assert n == sae.n_latents
    engine.dispose()


def test_top_examples_carry_true_per_residue_values(tiny_run: TinyRun) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        sae = session.scalars(select(Sae).where(Sae.name == "L3-residue-topk")).one()
        rows = session.execute(
            select(TopExample, Protein, Feature)
            .join(Protein, Protein.id == TopExample.protein_id)
            .join(Feature, Feature.id == TopExample.feature_id)
            .where(Feature.sae_id == sae.id, TopExample.bin == "top")
        ).all()
        assert rows
        for example, protein, feature in rows[:50]:
            values = decode_values(example.residue_values)
            assert values.shape == (protein.length,)
            # Residue level: the example's activation is the max over its residues.
            assert abs(float(values.max()) - example.activation) <= 1e-2 * max(
                1.0, example.activation
            )
            assert example.max_position == int(values.argmax())
            assert example.activation <= feature.max_activation + 1e-4
        bins = set(session.scalars(select(TopExample.bin).distinct()))
        assert "top" in bins and any(b.startswith("q") for b in bins)
        assert session.scalar(select(func.count()).select_from(Structure)) > 0
        assert session.scalar(select(func.count()).select_from(FeatureNeighbor)) > 0
    engine.dispose()


def test_examples_are_stored_with_the_chain_that_shows_them(tiny_run: TinyRun) -> None:
    """Every example on a protein with real structure chains names the chain that resolves its
    peak residue, else holds most of its activation (app.structure_coverage on the stored
    values, float16), with that chain's share and peak flag; the "structure" group puts the
    examples whose chain resolves the peak first."""
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        chains: dict[int, list[Structure]] = {}
        for s in session.scalars(select(Structure).order_by(Structure.id)):
            chains.setdefault(s.protein_id, []).append(s)
        rows = session.scalars(select(TopExample).order_by(TopExample.feature_id, TopExample.bin,
                                                           TopExample.rank)).all()  # fmt: skip
        n, same_chain, peaks = 0, 0, {True: 0, False: 0}
        structure_group: dict[int, list[bool]] = {}
        for ex in rows:
            own = chains.get(ex.protein_id, [])
            assert (ex.structure_id is None) == (not own)
            if not own:
                assert ex.structure_share is None and ex.structure_peak_covered is None
                continue
            chain = next(c for c in own if c.id == ex.structure_id)
            values = decode_values(ex.residue_values)
            found = coverage(values, chain.sequence_positions, ex.max_position)
            assert ex.structure_peak_covered == found.peak_covered
            if found.activation_share is not None:
                assert ex.structure_share == pytest.approx(found.activation_share, abs=2e-2)
            best = best_chain(values, [c.sequence_positions for c in own], ex.max_position)
            assert best is not None
            same_chain += own[best[0]].id == chain.id or best[1].key() == found.key()
            n += 1
            peaks[bool(ex.structure_peak_covered)] += 1
            if ex.bin == "structure":
                structure_group.setdefault(ex.feature_id, []).append(ex.structure_peak_covered)
    engine.dispose()
    assert n > 100 and peaks[True] and peaks[False]
    assert same_chain >= 0.99 * n  # float16 values may reorder near ties
    for flags in structure_group.values():
        assert flags == sorted(flags, reverse=True)


def test_pooled_only_layers_get_tracks_from_the_model(tiny_run: TinyRun) -> None:
    """Layer 4 (protein transcoder target) and the control's layer 3 have no residue shards;
    the control's example tracks, recomputed with the random model, still add up to the
    pooled activation (the attribution is exact)."""
    workdir = tiny_run.pipeline.workdir
    main, control = EmbeddingStore(workdir / "embeddings"), EmbeddingStore(workdir / RANDOM_SUBDIR)
    assert (main.layers, main.residue_layers) == ([3, 4], [3])
    assert (control.layers, control.residue_layers) == ([3], [])
    assert not any(k.endswith(".residue") for k in _tensor_names(workdir / RANDOM_SUBDIR))
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        for name in ("L3-protein-topk-randinit", "L3-protein-topk"):
            sae = session.scalars(select(Sae).where(Sae.name == name)).one()
            rows = session.execute(
                select(TopExample, Protein)
                .join(Protein, Protein.id == TopExample.protein_id)
                .join(Feature, Feature.id == TopExample.feature_id)
                .where(Feature.sae_id == sae.id, TopExample.bin == "top")
            ).all()
            assert len(rows) > 20, name
            for example, protein in rows:
                values = decode_values(example.residue_values).astype(np.float64)
                assert values.shape == (protein.length,)
                assert values.sum() == pytest.approx(example.activation, rel=2e-2, abs=2e-3)
    engine.dispose()


def _tensor_names(directory: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for file in directory.glob("shard_*.safetensors"):
        with safe_open(str(file), framework="numpy") as handle:
            names |= set(handle.keys())
    return names


def test_residue_layers_follow_the_dictionaries(tmp_path: Path) -> None:
    """The full-corpus config: residue shards for layers 3 and 4 only; an explicit list that
    drops a layer a residue-level dictionary reads is refused, naming the dictionary."""
    settings = Settings(data_dir=tmp_path)
    full = Pipeline(load_config(Path("configs/full-mini.toml"), settings), settings)
    assert full.embed_layers() == [1, 2, 3, 4]
    assert full.residue_layers() == [3, 4] and full.residue_layers(RANDOM_SUBDIR) == []
    names = {p.spec.name for p in full.plans()}
    assert {f"L{n}-protein-topk" for n in (1, 2, 3, 4)} <= names
    assert {"L1to2-protein-transcoder", "L3to4-residue-transcoder", "L4-protein-neurons"} <= names
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(CONFIG.read_text().replace(
        'max_tokens_per_batch = 8192', 'max_tokens_per_batch = 8192\nresidue_layers = [3, 4]'))  # fmt: skip
    cfg = load_config(explicit, settings)
    assert Pipeline(cfg, settings).residue_layers() == [3, 4]  # more than needed is allowed
    explicit.write_text(CONFIG.read_text().replace(
        'max_tokens_per_batch = 8192', 'max_tokens_per_batch = 8192\nresidue_layers = [4]'))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"explicit\.toml.*lacks layer\(s\) \[3\].*'L3-residue-topk'"
    ):
        load_config(explicit, settings)


def test_go_explanations_concepts_landed(tiny_run: TinyRun) -> None:
    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        kinds = set(session.scalars(select(AnalysisSummary.kind)))
        assert {"go", "analysis", "concepts"} <= kinds
        go = session.scalars(select(AnalysisSummary).where(AnalysisSummary.kind == "go")).first()
        assert go is not None and "bh" in go.payload
        hits = session.scalars(select(GoEnrichment).where(GoEnrichment.protocol == "strict")).all()
        for hit in hits[:100]:
            # BH and Bonferroni never make a test more significant; stored hits are significant
            # by one of BH, Bonferroni and BH over the length-stratified test.
            assert hit.p_length is not None and hit.q_length is not None
            assert hit.q_value >= hit.p_value - 1e-15 and hit.q_length >= hit.p_length - 1e-15
            assert hit.p_bonferroni >= hit.p_value - 1e-15
            assert min(hit.q_value, hit.p_bonferroni, hit.q_length) < 0.05
            assert hit.study_hits <= hit.study_size <= hit.pop_size
        # Each feature's count of length-adjusted hits is what its stored rows say.
        adjusted = dict(
            session.execute(
                select(GoEnrichment.feature_id, func.count())
                .where(GoEnrichment.q_length < 0.05)
                .group_by(GoEnrichment.feature_id)
            ).all()
        )
        counted = {
            f.id: f.n_go_hits_length
            for f in session.scalars(select(Feature).where(Feature.n_go_hits > 0))
        }
        assert counted and all(v is not None for v in counted.values())
        assert {f: n for f, n in counted.items() if n} == adjusted
        # The seed paper's protocol beside ours: per dictionary (statement, settings, figures)
        # and per hit (two-sided p, Bonferroni over every BP term, no BH), over the human
        # proteins only (the tiny corpus mixes them with organism-less structure proteins).
        protocols = session.scalars(select(GoProtocol)).all()
        n_saes = session.scalar(select(func.count()).select_from(Sae))
        assert sorted(p.name for p in protocols) == sorted(["paper", "strict"] * n_saes)
        n_human = session.scalar(
            select(func.count()).select_from(Protein).where(Protein.organism == "Homo sapiens")
        )
        total = session.scalar(select(func.count()).select_from(Protein))
        assert 0 < n_human < total
        assert all(p.figures["population_size"] == n_human for p in protocols if p.name == "paper")
        paper = session.scalars(select(GoEnrichment).where(GoEnrichment.protocol == "paper")).all()
        for hit in paper:
            assert hit.namespace == "BP" and hit.q_value is None and hit.p_length is None
            assert hit.p_bonferroni < 0.05 and hit.pop_size == n_human
        per_feature = dict(
            session.execute(
                select(GoEnrichment.feature_id, func.count())
                .where(GoEnrichment.protocol == "paper")
                .group_by(GoEnrichment.feature_id)
            ).all()
        )
        stored = dict(session.execute(select(Feature.id, Feature.n_go_hits_paper)).all())
        assert all(v is not None for v in stored.values())
        assert {f: n for f, n in stored.items() if n} == per_feature
        n_expl = session.scalar(select(func.count()).select_from(Explanation))
        assert n_expl and n_expl > 0
        assert session.scalar(select(func.count()).select_from(ConceptAlignment)) > 0
        # The Concept page's examples, chosen at publish: labels laid on the protein's sequence.
        examples = session.execute(
            select(ConceptExample, Protein.sequence).join(
                Protein, Protein.id == ConceptExample.protein_id
            )
        ).all()
        assert examples  # the tiny run has labelled chains among its proteins
        for example, sequence in examples:
            assert len(example.labels) == len(sequence) and "1" in example.labels
            assert set(example.labels) <= {"0", "1", "-"}
    engine.dispose()


def test_residue_level_explain_prompts_show_where_each_protein_fires(tiny_run: TinyRun) -> None:
    """The pipeline hands the explain stage each residue-level feature's per-residue activations:
    every active protein in the prompt names its strongest residue, a residue of that protein
    whose value (over the feature's max) is the protein's own activation (its max residue).
    Protein-level prompts have no per-residue sites."""
    wd, corpus = tiny_run.pipeline.workdir, tiny_run.pipeline.corpus

    def records(name: str) -> list[dict[str, Any]]:
        lines = (wd / "explain" / name / "explanations.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("prompt")]

    shown = 0
    for rec in records("L3-residue-topk"):
        for row, act in zip(rec["explain_rows"], rec["explain_activations"], strict=True):
            if act == 0:
                continue
            block = rec["prompt"].split(f"### {corpus.accessions[row]}\n")[1].split("###")[0]
            site = re.search(r"fires most at: ([A-Z])(\d+) in (\S+) \(([0-9.]+)\)", block)
            assert site is not None, block
            assert corpus.sequences[row][int(site.group(2)) - 1] == site.group(1)
            assert site.group(4) == f"{act:.2f}"
            shown += 1
    assert shown > 0
    assert all("fires most at" not in r["prompt"] for r in records("L3-protein-topk"))


def test_rerun_resumes_and_keeps_the_published_run(tiny_run: TinyRun) -> None:
    workdir = tiny_run.pipeline.workdir
    features = workdir / "analysis" / "L3-protein-topk" / "features.npz"
    before = np.load(features)["max_activation"].copy()
    # Simulate an interruption of the analyze stage for one dictionary, then rerun everything.
    (workdir / "analysis" / "L3-protein-topk" / "DONE").unlink()
    again = Pipeline(tiny_run.pipeline.cfg, tiny_run.settings, database_url=tiny_run.url)
    assert again.run() == tiny_run.run_id  # same config: the published run is kept
    np.testing.assert_array_equal(np.load(features)["max_activation"], before)
    manifest = json.loads((workdir / "embeddings" / "manifest.json").read_text())
    assert manifest["done"] is True


def _markers(workdir: Path, stage: str) -> dict[str, tuple[str, int]]:
    """Per dictionary: its DONE stamp and the marker's modification time."""
    return {
        done.parent.name: (done.read_text(), done.stat().st_mtime_ns)
        for done in sorted((workdir / stage).glob("*/DONE"))
    }


def test_a_changed_setting_redoes_exactly_what_depends_on_it(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    """On a copy of the finished run: a new step count for one SAE trains it (and its
    random-model control, the same recipe) again, then analyses and GO-tests those two again,
    and keeps every other dictionary's work; a speed-only setting redoes nothing; a new
    analysis setting redoes every analysis and no training."""
    import shutil

    from trainer.config import TrainerConfig

    settings = Settings(data_dir=tmp_path / "data", shared_dir=tiny_run.settings.shared_dir)
    workdir = settings.data_dir / "runs" / tiny_run.pipeline.cfg.run.name
    shutil.copytree(tiny_run.pipeline.workdir, workdir)
    before = {stage: _markers(workdir, stage) for stage in ("saes", "analysis", "go")}
    weights = (workdir / "saes" / "L3-protein-topk" / "sae.safetensors").read_bytes()

    def pipeline(change: Callable[[dict[str, Any]], None]) -> Pipeline:
        config = tiny_run.pipeline.cfg.model_dump(mode="json")
        change(config)
        return Pipeline(TrainerConfig.model_validate(config), settings, database_url="sqlite://")

    def fewer_steps(config: dict[str, Any]) -> None:
        next(s for s in config["saes"] if s["name"] == "L3-protein-topk")["steps"] = 200

    pipeline(fewer_steps).run(["train", "analyze", "go"])
    redone = {"L3-protein-topk", "L3-protein-topk-randinit"}
    for stage in ("saes", "analysis", "go"):
        after = _markers(workdir, stage)
        assert after.keys() == before[stage].keys(), stage
        changed = {name for name in after if after[name] != before[stage][name]}
        assert changed == redone, (stage, changed)
    assert (workdir / "saes" / "L3-protein-topk" / "sae.safetensors").read_bytes() != weights
    metrics = json.loads((workdir / "saes" / "L3-protein-topk" / "metrics.json").read_text())
    assert metrics["steps"] == 200

    trained = _markers(workdir, "saes")
    analysed = _markers(workdir, "analysis")

    def faster(config: dict[str, Any]) -> None:
        fewer_steps(config)
        config["analyze"]["batch_size"] = 512

    pipeline(faster).run(["train", "analyze"])
    assert (_markers(workdir, "saes"), _markers(workdir, "analysis")) == (trained, analysed)

    def more_examples(config: dict[str, Any]) -> None:
        faster(config)
        config["analyze"]["n_top"] += 1

    pipeline(more_examples).run(["train", "analyze"])
    assert _markers(workdir, "saes") == trained
    after = _markers(workdir, "analysis")
    assert all(after[name] != analysed[name] for name in analysed)
    n_top = tiny_run.pipeline.cfg.analyze.n_top + 1
    examples = np.load(workdir / "analysis" / "L3-residue-topk" / "examples.npz")
    top = examples["bin"] == "top"
    assert np.bincount(examples["feature"][top]).max() == n_top


def test_a_run_published_from_other_artifacts_is_published_again(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    """Same config, other artifacts behind the published run (here: one published before the
    trainer kept stamps, without feature maps): publish loads the run again, then keeps it."""
    import shutil

    from sqlalchemy import update

    store = tmp_path / "store.sqlite"
    shutil.copy(tiny_run.url.removeprefix("sqlite:///"), store)
    url = f"sqlite:///{store}"
    engine = make_engine(url)
    with session_factory(engine)() as session:
        session.execute(update(Run).values(artifacts_digest=None))
        session.execute(update(Feature).values(map_x=None, map_y=None))
        session.commit()
        published_at = session.scalars(select(Run.published_at)).one()
    pipeline = Pipeline(tiny_run.pipeline.cfg, tiny_run.settings, database_url=url)
    new_id = pipeline.run(["publish"])
    with session_factory(engine)() as session:
        run = session.get(Run, new_id)
        assert run is not None and run.artifacts_digest == pipeline.artifacts_digest()
        assert published_at is not None and run.published_at is not None
        assert run.published_at > published_at
        assert session.scalar(select(func.count()).select_from(Run)) == 1
        assert session.scalar(select(func.count()).where(Feature.map_x.is_not(None))) > 100
    engine.dispose()
    assert pipeline.run(["publish"]) == new_id  # nothing changed since: kept


def test_artifacts_digest_follows_what_training_wrote(tiny_run: TinyRun) -> None:
    """Training redone from the same inputs (same stamps) by a trainer that measures more must
    be published again: the digest follows each dictionary's metrics and weights."""
    pipeline = tiny_run.pipeline
    metrics = pipeline.workdir / "saes" / "L3to4-protein-transcoder" / "metrics.json"
    before, original = pipeline.artifacts_digest(), metrics.read_bytes()
    try:
        data = json.loads(original)
        data["loss_recovered"] = None  # as an older trainer left it
        metrics.write_text(json.dumps(data))
        assert pipeline.artifacts_digest() != before
    finally:
        metrics.write_bytes(original)
    assert pipeline.artifacts_digest() == before


def test_summary_reads_the_run_directory(tiny_run: TinyRun) -> None:
    from trainer.summary import collect_summary

    workdir = tiny_run.pipeline.workdir
    summary = collect_summary(workdir)
    assert set(summary["timings_s"]) >= {"ingest", "embed", "train", "analyze", "go", "publish"}
    assert all(seconds >= 0 for seconds in summary["timings_s"].values())
    assert summary["corpus"]["n_proteins"] == len(tiny_run.pipeline.corpus.accessions)
    names = [p.spec.name for p in tiny_run.pipeline.plans()]
    assert sorted(summary["dictionaries"]) == sorted(names)
    for name, row in summary["dictionaries"].items():
        metrics = json.loads((workdir / "saes" / name / "metrics.json").read_text())
        assert row["l0"] == metrics["l0"] and row["fve"] == metrics.get("fve")
        go = json.loads((workdir / "go" / name / "summary.json").read_text())
        assert row["go_pct_features_bh"] == go["bh"]["pct_features_with_hit"]
        assert row["go_s"] == go["seconds"] >= 0 and row["analyze_s"] >= 0
    embed = summary["embeddings"]
    assert embed["forward_s"] > 0 and embed["write_s"] > 0 and embed["wait_s"] >= 0
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        collect_summary(workdir.parent / "never-ran")


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.read_text().replace('name = "tiny-test-run"', 'name = "bad name!"'))
    with pytest.raises(ConfigError, match=r"bad\.toml: run\.name"):
        load_config(bad, Settings())
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\nname=1")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(broken, Settings())


def test_a_config_extends_another(tmp_path: Path) -> None:
    """The repository's variant config: only its overrides differ from the demo it extends."""
    settings = Settings()
    demo = load_config(Path("configs/demo.toml"), settings)
    variant = load_config(Path("configs/demo-allchains.toml"), settings)
    assert variant.run.name == "demo-mini-esm2-allchains" and variant.run.seed == demo.run.seed
    assert variant.concepts is not None and demo.concepts is not None
    assert variant.concepts.max_chains_per_split is None  # 0 in TOML: every chain
    assert variant.concepts.label_dir == demo.concepts.label_dir
    assert variant.saes == demo.saes and variant.embed == demo.embed
    device = load_config(Path("configs/full-mini-device.toml"), settings)
    assert device.ingest.structures_table is None  # "" in TOML switches the table off
    assert not device.controls.random_init
    assert device.saes == load_config(Path("configs/full-mini.toml"), settings).saes
    assert (
        device.ingest.protein_tsvs
        == load_config(Path("configs/full-mini.toml"), settings).ingest.protein_tsvs
    )
    human = load_config(Path("configs/human-mini.toml"), settings)
    full = load_config(Path("configs/full-mini.toml"), settings)
    assert human.saes == full.saes and human.embed == full.embed  # every dictionary, all layers
    assert [Path(p).name for p in human.ingest.protein_tsvs] == [
        "human_sprot2014.tsv.gz", "structure_proteins_sprot2014.tsv.gz"]  # fmt: skip
    assert not human.controls.random_init and human.ingest.structures_table is not None
    assert not device.go.length_adjusted and human.go.length_adjusted  # off only on the device
    cpu = load_config(Path("configs/full-mini-cpu.toml"), settings)  # the device run's corpus
    assert cpu.saes == full.saes and cpu.ingest.protein_tsvs == full.ingest.protein_tsvs
    assert cpu.ingest.structures_table is None and not cpu.ingest.include_structure_chains
    assert not cpu.go.length_adjusted  # Fisher alone, as on the device: their GO figures compare
    assert cpu.embed.residue_layers == [1, 2, 3, 4] and cpu.embed.attention == "fused"
    assert not cpu.controls.random_init and cpu.embed.max_tokens_per_batch == 4096
    five_k = load_config(Path("configs/human-5k.toml"), settings)
    assert [s.name for s in five_k.saes] == ["L3-protein-topk", "L3-residue-topk"]
    assert five_k.saes[1] == next(s for s in demo.saes if s.name == "L3-residue-topk")
    assert (five_k.ingest.max_proteins, five_k.ingest.max_length) == (5000, 5000)
    loop = tmp_path / "a.toml"
    loop.write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop, settings)
    orphan = tmp_path / "orphan.toml"
    orphan.write_text('extends = "missing.toml"\n')
    with pytest.raises(ConfigError, match=r"missing\.toml: no such config file \(extended by"):
        load_config(orphan, settings)


def test_explorer_reads_the_pipeline_store(tiny_run: TinyRun) -> None:
    from fastapi.testclient import TestClient

    from tests.apps import app_for

    with TestClient(app_for(tiny_run.url)) as client:
        runs = client.get("/api/v1/runs").json()
        assert runs[0]["name"] == "tiny-test-run"
        sae = next(s for s in runs[0]["saes"] if s["name"] == "L3-residue-topk")
        assert client.get(f"/saes/{sae['id']}/features").status_code == 200
        page = client.get(f"/api/v1/saes/{sae['id']}/features?sort=max_activation&order=desc")
        top = page.json()["items"][0]
        detail = client.get(f"/api/v1/features/{top['id']}").json()
        assert detail["top_examples"], "the strongest feature has top examples"
        assert {p["name"] for p in detail["go_protocols"]} == {"strict", "paper"}
        assert "go_hits_paper" in detail
        html = client.get(f"/features/{top['id']}").text
        assert "Strict protocol (ours)" in html and "Seed paper's protocol" in html
        assert "two-sided Fisher, is_a propagation" in html  # its settings, stated
        assert client.get(f"/runs/{runs[0]['id']}/findings").status_code == 200
        # The GO stage's length-binned permutation control, beside the feature's GO terms.
        go = json.loads(
            (tiny_run.pipeline.workdir / "go" / sae["name"] / "summary.json").read_text()
        )
        real = go["bh"]["pct_features_with_hit"]
        shuffled = go["permutation_control"]["mean_pct_features_with_hit_bh"]
        assert detail["go_control"] == {
            "pct_features_with_hit": real, "pct_features_with_hit_shuffled": shuffled,
            "n_permutations": go["permutation_control"]["n_permutations"],
            "alpha": go["config"]["alpha"],
            "pct_features_with_hit_length_adjusted": go["length_bh"]["pct_features_with_hit"],
            "pct_features_with_hit_length_adjusted_shuffled": go["permutation_control"][
                "mean_pct_features_with_hit_length_bh"],
            "length_driven": real > 0 and shuffled >= 0.5 * real,
        }  # fmt: skip
        html = client.get(f"/features/{top['id']}").text
        assert 'id="go-control"' in html and f"{shuffled:.1f}%" in html
        listing = client.get(f"/saes/{sae['id']}/features").text  # cautions only
        assert ('id="go-control"' in listing) == detail["go_control"]["length_driven"]


def _map_neighbourhoods(xy: np.ndarray, directions: np.ndarray, k: int) -> tuple[float, float]:
    """Mean decoder cosine of each feature to its ``k`` nearest features on the map, and to
    every other feature (what a map that ignored the decoders would give)."""
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    cos = unit @ unit.T
    dist = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    near = np.argsort(dist, axis=1)[:, :k]
    off_diagonal = cos[~np.eye(len(cos), dtype=bool)]
    return float(np.take_along_axis(cos, near, axis=1).mean()), float(off_diagonal.mean())


def test_feature_map_places_features_by_decoder_direction(tiny_run: TinyRun) -> None:
    """Analyze maps each SAE's live features (UMAP of decoder directions, seeded: a rerun gives
    the same map); map neighbours share decoder directions far above chance; dead latents and
    the neuron baseline stay off the map; publish stores it and the explorer serves it."""
    from fastapi.testclient import TestClient

    from app.client import ApiError, ProtSAEClient
    from app.sae import load_dictionary
    from tests.apps import app_for
    from trainer.feature_map import feature_map

    workdir = tiny_run.pipeline.workdir
    name = "L3-residue-topk"
    xy = np.load(workdir / "analysis" / name / "feature_map.npz")["xy"]
    dead = np.load(workdir / "analysis" / name / "features.npz")["is_dead"]
    directions = load_dictionary(workdir / "saes" / name).decoder_directions().numpy()
    live = ~dead
    assert np.isnan(xy[dead]).all() and np.isfinite(xy[live]).all() and live.sum() >= 100
    assert xy[live].min() == 0.0 and xy[live].max() == pytest.approx(1.0)
    near, overall = _map_neighbourhoods(xy[live], directions[live], k=5)
    assert near > overall + 0.1, (near, overall)
    analyze = tiny_run.pipeline.cfg.analyze
    again = feature_map(directions, live, analyze.map, analyze.seed)
    np.testing.assert_array_equal(again, xy)
    assert not (workdir / "analysis" / "L3-residue-neurons" / "feature_map.npz").exists()

    engine = make_engine(tiny_run.url)
    with session_factory(engine)() as session:
        saes = {s.name: s for s in session.scalars(
            select(Sae).where(Sae.run_id == tiny_run.run_id))}  # fmt: skip
        stored = session.execute(
            select(Feature.map_x, Feature.map_y)
            .where(Feature.sae_id == saes[name].id)
            .order_by(Feature.index)
        ).all()
        neuron_coords = session.scalars(
            select(Feature.map_x).where(Feature.sae_id == saes["L3-residue-neurons"].id)
        ).all()
        mapped = session.scalars(
            select(Feature.id)
            .where(Feature.sae_id == saes[name].id, Feature.map_x.is_not(None))
            .order_by(Feature.index)
        ).all()
    engine.dispose()
    as_stored = np.array([[np.nan if v is None else v for v in row] for row in stored])
    np.testing.assert_allclose(as_stored, xy, rtol=1e-6)
    assert set(neuron_coords) == {None}

    with TestClient(app_for(tiny_run.url)) as client:
        data = client.get(f"/api/v1/saes/{saes[name].id}/map").json()
        assert data["feature_id"] == list(mapped) and len(data["x"]) == live.sum()
        np.testing.assert_allclose(data["x"], xy[live, 0], rtol=1e-6)
        api = ProtSAEClient(http=client)  # scripts read the same columns
        assert api.feature_map(saes[name].id)["x"] == data["x"]
        assert api.get_sae(saes[name].id)["has_map"] is True  # says so before the map's 404
        assert api.get_sae(saes["L3-residue-neurons"].id)["has_map"] is False
        with pytest.raises(ApiError, match=r"404.*neuron baseline has no decoder directions"):
            api.feature_map(saes["L3-residue-neurons"].id)
        page = client.get(f"/saes/{saes[name].id}/map?feature={mapped[0]}")
        assert page.status_code == 200 and f'data-highlight="{mapped[0]}"' in page.text
        assert client.get(f"/saes/{saes['L3-residue-neurons'].id}/map").status_code == 404
        assert 'id="map-link"' in client.get(f"/saes/{saes[name].id}/features").text
        home = client.get("/").text
        assert f'href="/saes/{saes[name].id}/map"' in home
        assert f'href="/saes/{saes["L3-residue-neurons"].id}/map"' not in home
        assert 'id="on-map"' in client.get(f"/features/{mapped[0]}").text
        # A pasted sequence's features link to the map, with their maxima in the fragment.
        sequence = tiny_run.pipeline.corpus.sequences[0]
        form = {"sae_id": str(saes[name].id), "text": f">mine\n{sequence}", "top_n": "5"}
        result = client.post("/encode", data=form)
        assert result.status_code == 200, result.text[:300]
        encoded = json.loads(re.search(r'id="encode-data">(.*?)</script>', result.text)[1])
        pairs = ",".join(f"{f['feature_id']}:{f['max']:.4g}"
                         for f in encoded["results"][0]["features"])  # fmt: skip
        link = f'href="/saes/{saes[name].id}/map#name=mine&amp;act={pairs}"'
        assert len(encoded["results"][0]["features"]) == 5 and link in result.text


def test_a_run_that_publishes_refuses_an_unmigrated_store_before_any_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing into a store nobody migrated failed after every other stage (an hour on the
    human proteome) with a SQL traceback; now the CLI says what to do before starting."""
    from typer.testing import CliRunner

    from trainer.cli import cli

    monkeypatch.setenv("PROTSAE_DATA_DIR", str(tmp_path / "data"))  # the CLI reads its settings
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    result = CliRunner().invoke(
        cli,
        ["trainer", "run", str(CONFIG), "--stages", "ingest,publish", "--database-url", url],
    )
    assert result.exit_code == 2
    # rich wraps the message in a box at the terminal's width: compare without the layout.
    flat = "".join(result.output.replace("│", "").split())
    assert "isnotmigrated:run`protsaedbupgrade`first" in flat
    assert not (tmp_path / "data" / "runs").exists()  # not even ingest ran
    monkeypatch.setenv("PROTSAE_DATABASE_URL", url)  # serve sets it: restored after the test
    served = CliRunner().invoke(cli, ["serve", "--database-url", url])
    assert served.exit_code == 2
    assert "isnotmigrated" in "".join(served.output.replace("│", "").split())
    migrate.upgrade(url)
    migrate.downgrade(url, "base")  # migrated once, then emptied: still refused
    again = CliRunner().invoke(
        cli, ["trainer", "run", str(CONFIG), "--stages", "publish", "--database-url", url]
    )
    assert again.exit_code == 2
    assert "isnotmigrated" in "".join(again.output.replace("│", "").split())
