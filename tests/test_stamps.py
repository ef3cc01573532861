"""Completion stamps: canonical digests, atomic markers, and what a marker from before stamps means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.atomic_write import atomic_file, write_atomic
from trainer.stage_driver import StageUnit, inputs_record, run_unit
from trainer.stamps import digest, read_stamp, write_stamp


def test_digest_is_canonical_and_sensitive() -> None:
    a = {"spec": {"k": 16, "layer": 3}, "model": "d4f0"}
    assert digest(a) == digest({"model": "d4f0", "spec": {"layer": 3, "k": 16}})
    assert digest(a) != digest({"spec": {"k": 32, "layer": 3}, "model": "d4f0"})
    assert len(digest(a)) == 20


def test_markers(tmp_path: Path) -> None:
    done = tmp_path / "DONE"
    unit, abc = StageUnit("t", done, {}), StageUnit("t", done, {}, fixed_stamp="abc")
    assert read_stamp(done) is None and abc.redo_reason() == "not done yet"
    done.write_text("ok\n")  # as written before stamps
    assert "before stamps" in (unit.redo_reason() or "")
    write_stamp(done, "abc")
    assert abc.redo_reason() is None and not list(tmp_path.glob("*tmp"))
    assert (unit.redo_reason() or "").startswith("its inputs changed since it was made")
    done.write_text("")
    assert read_stamp(done) is None


def test_an_interrupted_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "arrays.npz"
    with atomic_file(target) as handle:
        np.savez_compressed(handle, x=np.arange(3))
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        np.savez_compressed(handle, x=np.arange(5))
        raise RuntimeError("killed mid-write")
    with np.load(target) as saved:  # the name is kept: no ".npz" appended to a temporary
        np.testing.assert_array_equal(saved["x"], np.arange(3))
    write_atomic(tmp_path / "sub" / "summary.json", "{}")
    assert sorted(p.name for p in target.parent.iterdir()) == ["arrays.npz", "summary.json"]


def test_the_driver_skips_redoes_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "analysis" / "d"
    runs: list[int] = []

    def unit(**inputs: object) -> StageUnit:
        return StageUnit("analyze: d", out / "DONE", inputs, outputs=(out / "result.txt",))

    def compute() -> str:
        runs.append(1)
        write_atomic(out / "result.txt", str(len(runs)))
        return "computed"

    def load() -> str:
        return (out / "result.txt").read_text()

    first = unit(k=8, corpus="c1")
    assert first.redo_reason() == "not done yet"
    assert run_unit(first, compute, load=load, clear=out) == "computed"
    assert read_stamp(out / "DONE") == first.stamp == digest({"k": 8, "corpus": "c1"})
    assert run_unit(unit(k=8, corpus="c1"), compute, load=load, clear=out) == "1"  # skipped
    assert capsys.readouterr().out == ""

    (out / "stale.npz").write_bytes(b"from other inputs")
    changed = unit(k=16, corpus="c1")
    assert changed.redo_reason() == "its inputs changed since it was made (k)"
    assert run_unit(changed, compute, load=load, clear=out) == "computed"
    assert "analyze: d: its inputs changed since it was made (k): doing it again" in (
        capsys.readouterr().out
    )
    assert not (out / "stale.npz").exists() and len(runs) == 2

    (out / "result.txt").unlink()  # done, but an output is gone: made again
    assert changed.redo_reason() == "output missing: result.txt"
    run_unit(changed, compute, load=load)
    (out / "DONE").write_text("ok\n")  # a marker from before stamps
    assert "before stamps" in (changed.redo_reason() or "")


# -- the stages moved onto the driver keep the markers the older code wrote ---------------------


def test_ingest_keeps_a_corpus_marked_by_the_older_code(
    tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.ingest import IngestConfig, run_ingest

    cfg = IngestConfig(protein_tsvs=[shared_dir / "data/proteins/structure_proteins_sprot2014.tsv.gz"],
                       max_proteins=40, seed=1)  # fmt: skip
    corpus = run_ingest(tmp_path, cfg)
    done = tmp_path / "corpus" / "DONE"
    assert read_stamp(done) == cfg.config_hash()  # the stamp is still the config's hash
    # As the older code left it: the bare hash, nothing recorded beside it.
    done.write_text(cfg.config_hash())
    (tmp_path / "corpus" / "DONE.inputs.json").unlink()
    built = (tmp_path / "corpus" / "proteins.tsv.gz").stat().st_mtime_ns
    assert run_ingest(tmp_path, cfg) == corpus
    assert (tmp_path / "corpus" / "proteins.tsv.gz").stat().st_mtime_ns == built
    assert capsys.readouterr().out == ""

    other = cfg.model_copy(update={"seed": 2})
    assert run_ingest(tmp_path, other).accessions != corpus.accessions
    assert "ingest: its inputs changed since it was made (not recorded which): doing it again" in (
        capsys.readouterr().out
    )
    assert read_stamp(done) == other.config_hash()
    assert run_ingest(tmp_path, cfg) == corpus
    assert "ingest: its inputs changed since it was made (config)" in capsys.readouterr().out


def test_train_keeps_old_stamps_resumes_matching_checkpoints_and_says_why(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.sae import Provenance
    from tests.real_embeddings import cached_real_activations
    from trainer import train
    from trainer.train import SaeSpec, run_train, train_dictionary

    acts = cached_real_activations(request.config, shared_dir)
    x = acts.pooled[3]
    data = (x[:240], None, x[240:], None)
    calls: list[str] = []

    def get_data(spec: SaeSpec) -> tuple[np.ndarray, None, np.ndarray, None]:
        calls.append(spec.name)
        return data

    restored: list[int] = []
    original_restore = train._TrainState.restore

    def spy(self: train._TrainState, *args: object) -> None:
        original_restore(self, *args)  # type: ignore[arg-type]
        restored.append(self.step)

    monkeypatch.setattr(train._TrainState, "restore", spy)
    spec = SaeSpec(name="t", kind="topk", level="protein", layer=3, expansion=2, k=8, steps=40,
                   batch_size=64, eval_every=20, checkpoint_every=20)  # fmt: skip
    base = Provenance("esm2_t4_2M_sprot14mini", acts.model_sha256, 3, None, "protein", "layer_norm")
    shared_inputs = {"corpus": "c1", "model": acts.model_sha256}

    def inputs(loss: int) -> object:
        return lambda s: {**shared_inputs, "loss": loss, "spec": s.model_dump(mode="json")}

    def train_with(loss: int) -> dict[str, object]:
        return run_train(tmp_path, [spec], get_data, base, progress=False, device="cpu",
                         inputs=inputs(loss))["t"]  # type: ignore[arg-type]  # fmt: skip

    # An unfinished dictionary whose INPUTS match resumes from its checkpoint.
    files = tmp_path / "saes" / "t"
    old_stamp = digest({**shared_inputs, "loss": 1, "spec": spec.model_dump(mode="json")})
    files.mkdir(parents=True)
    write_stamp(files / "INPUTS", old_stamp)

    def crash(step: int) -> None:
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dictionary(spec, *data, checkpoint_dir=files / "checkpoint", on_step=crash,
                         progress=False)  # fmt: skip
    first = train_with(1)
    assert restored == [20] and calls == ["t"] and not (files / "checkpoint").exists()
    assert read_stamp(files / "DONE") == old_stamp  # what the older code's stamp(spec) gave

    # As the older code left it: the stamp alone, nothing recorded beside it: kept.
    (files / "DONE.inputs.json").unlink()
    assert train_with(1) == first and calls == ["t"]
    assert capsys.readouterr().out == ""

    # Another input: trained again, and the log says why.
    train_with(2)
    assert calls == ["t", "t"]
    assert (
        "train: t: its inputs changed since it was made (not recorded which): doing it again"
        in (capsys.readouterr().out)
    )
    # A checkpoint left by other inputs is discarded, not resumed.
    with pytest.raises(KeyboardInterrupt):
        train_dictionary(spec, *data, checkpoint_dir=files / "checkpoint", on_step=crash,
                         progress=False)  # fmt: skip
    (files / "DONE").unlink()
    train_with(3)
    assert restored == [20] and calls == ["t", "t", "t"]

    # Without inputs, DONE holds "ok" as before, and such a dictionary is kept.
    unstamped = tmp_path / "plain"
    run_train(unstamped, [spec], get_data, base, progress=False, device="cpu")
    assert read_stamp(unstamped / "saes" / "t" / "DONE") == "ok"
    run_train(unstamped, [spec], get_data, base, progress=False, device="cpu")
    assert len(calls) == 4


def test_embed_decides_through_the_driver_from_its_manifest(
    tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.conftest import MINI_MODEL
    from tests.realdata import human_proteins
    from trainer.embed import EmbedConfig, run_embed

    corpus = [r["sequence"] for r in human_proteins(shared_dir, 40) if len(r["sequence"]) <= 200]
    corpus = corpus[:16]
    cfg = EmbedConfig(model=str(shared_dir / MINI_MODEL), layers=[2], shard_max_residues=800,
                      device="cpu")  # fmt: skip
    first = run_embed(tmp_path, corpus, cfg)
    out = tmp_path / "embeddings"
    assert first["done"] and len(first["shards"]) > 1
    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}
    # The manifest as this and the older code write it is the marker: a finished run is kept.
    assert run_embed(tmp_path, corpus, cfg) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")} == shards
    assert capsys.readouterr().out == ""

    # A shard lost: only it is embedded again, and the log says why.
    lost = out / first["shards"][0]["file"]
    lost.unlink()
    run_embed(tmp_path, corpus, cfg)
    assert f"embed: {out}: 1 of {len(shards)} shards not embedded yet" in capsys.readouterr().out
    kept = first["shards"][1]["file"]
    assert (out / kept).stat().st_mtime_ns == shards[kept] and lost.exists()

    # Another residue sample: embedded again, with the reason.
    again = run_embed(tmp_path, corpus, cfg.model_copy(update={"residue_proteins": 5}))
    assert again["residue_sample"]["proteins"] == 5
    said = capsys.readouterr().out
    assert f"embed: {out}: the stored residue sample changed (every protein -> 5 proteins, " in said
    assert "doing it again" in said
    assert json.loads((out / "manifest.json").read_text())["done"]


def test_explain_keeps_its_older_ok_markers_and_says_why_it_redoes(
    tmp_path: Path,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.explain_data import go_names, load_test_corpus, residue_reps, write_activations
    from tests.fake_anthropic import FakeAnthropic
    from trainer.explain.stage import ExplainConfig, run_explain_stage

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-fake")
    corpus = load_test_corpus(shared_dir, 80, max_len=200)
    neurons = np.stack(
        [np.clip(r.mean(0), 0, None) for r in residue_reps(shared_dir, corpus.sequences)]
    )
    write_activations(tmp_path, "neurons", neurons)
    names = go_names(shared_dir, corpus)
    cfg = ExplainConfig(n_features=2, concurrency=1, backoff_s=0.01)
    done = tmp_path / "explain" / "neurons" / "DONE"

    def explain(c: ExplainConfig, fake: FakeAnthropic) -> dict[str, object]:
        return run_explain_stage(tmp_path, c, dictionaries=[], neurons="neurons",
                                 go_term_names=names, base_url=fake.base_url, corpus=corpus)  # fmt: skip

    with FakeAnthropic() as fake:
        first = explain(cfg, fake)
        assert fake.messages()
    records = (tmp_path / "explain" / "neurons" / "explanations.jsonl").read_text()
    # As the older code left it: "ok", nothing recorded beside it. Not asked again (it would
    # cost money), not even from the cache; stamped instead.
    done.write_text("ok\n")
    inputs_record(done).unlink()
    with FakeAnthropic() as fake:
        kept = explain(cfg.model_copy(update={"concurrency": 2, "budget_usd": 5.0}), fake)
        assert fake.log == [] and kept["requests"] == 0
    assert kept["dictionaries"] == first["dictionaries"]
    assert read_stamp(done) not in (None, "ok") and capsys.readouterr().out == ""
    assert (tmp_path / "explain" / "neurons" / "explanations.jsonl").read_text() == records

    # A setting that shapes the records changed: explained again, and the log says which.
    with FakeAnthropic() as fake:
        explain(cfg.model_copy(update={"seed": 7}), fake)
        assert fake.messages()
    assert "explain: neurons: its inputs changed since it was made (explain): doing it again" in (
        capsys.readouterr().out
    )
    # An "ok" marker whose summary records other settings is not trusted.
    done.write_text("ok\n")
    with FakeAnthropic() as fake:
        explain(cfg, fake)
    assert "explain: neurons: finished before stamps existed" in capsys.readouterr().out
