"""Real ESM2 architectures (8M, 35M, 650M) loaded by hub name from a torch hub cache, in the on-disk
format of a downloaded checkpoint (tests/esm_checkpoints.py), and the seed paper's recipe
(configs/seed-esm2-35m.toml) at full width through every stage, publish, the server and encode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.esm import ESM2_ARCHITECTURES, ModelLoadError, embed_sequences, load_esm
from app.settings import PROJECT_ROOT, Settings
from tests.esm_checkpoints import PUBLISHED, write_random_checkpoint
from tests.realdata import human_proteins


@pytest.fixture
def hub_cache(tmp_path: Path) -> Iterator[Path]:
    """An empty torch hub cache (``$TORCH_HOME/hub``) for one test; the previous one restored."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub" / "checkpoints"
    finally:
        torch.hub.set_dir(previous)


def test_published_architectures_agree() -> None:
    for name, (layers, dim, heads, _) in PUBLISHED.items():
        assert ESM2_ARCHITECTURES[name] == (layers, dim, heads)


@pytest.mark.parametrize("name", ["esm2_t6_8M_UR50D", "esm2_t12_35M_UR50D"])
def test_a_hub_name_loads_from_the_hub_cache(name: str, hub_cache: Path, shared_dir: Path) -> None:
    write_random_checkpoint(name, hub_cache)
    loaded = load_esm(name, device="cpu")
    layers, dim, heads, millions = PUBLISHED[name]
    model = loaded.model
    assert (loaded.num_layers, loaded.embed_dim, model.attention_heads) == (layers, dim, heads)
    assert len(model.layers) == layers and model.embed_tokens.weight.shape == (33, dim)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / 1e6 - millions) / millions < 0.1, n_params
    assert loaded.name == name and len(loaded.sha256) == 64
    # The contact head came from the regression file, the whole state dict from the checkpoint.
    regression = torch.load(hub_cache / f"{name}-contact-regression.pt")["model"]
    head = model.contact_head.regression.weight
    assert head.shape == (1, layers * heads)
    assert torch.equal(head, regression["contact_head.regression.weight"])
    seq = human_proteins(shared_dir, 1)[0]["sequence"][:120]
    reps = embed_sequences(loaded, [seq], [layers // 2, layers])[0]
    assert reps[layers].shape == (len(seq), dim) and np.isfinite(reps[layers]).all()


def test_a_missing_model_names_the_files_to_place(hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_esm("esm2_t12_35M_UR50D", device="cpu")
    message = str(info.value)
    assert str(hub_cache / "esm2_t12_35M_UR50D.pt") in message
    assert str(hub_cache / "esm2_t12_35M_UR50D-contact-regression.pt") in message
    assert "never downloaded" in message
    assert not hub_cache.exists() or not any(hub_cache.iterdir())
    with pytest.raises(ModelLoadError, match="neither an existing file"):
        load_esm("resnet50", device="cpu")


def test_a_path_wins_over_the_hub_cache(hub_cache: Path, tmp_path: Path) -> None:
    """An explicit path is loaded even when the cache holds a file of the same name."""
    write_random_checkpoint("esm2_t6_8M_UR50D", hub_cache, seed=1)
    local = write_random_checkpoint("esm2_t6_8M_UR50D", tmp_path / "mine", seed=2)
    assert load_esm(local, device="cpu").sha256 != load_esm("esm2_t6_8M_UR50D", "cpu").sha256


def test_a_file_named_like_a_published_model_must_have_its_shape(tmp_path: Path) -> None:
    real = write_random_checkpoint("esm2_t6_8M_UR50D", tmp_path / "a")
    wrong = tmp_path / "b" / "esm2_t12_35M_UR50D.pt"
    wrong.parent.mkdir()
    wrong.write_bytes(real.read_bytes())
    (tmp_path / "b" / "esm2_t12_35M_UR50D-contact-regression.pt").write_bytes(
        (tmp_path / "a" / "esm2_t6_8M_UR50D-contact-regression.pt").read_bytes()
    )
    with pytest.raises(ModelLoadError, match=r"published esm2_t12_35M_UR50D .*\(6, 320, 20\)"):
        load_esm(wrong, device="cpu")


@pytest.mark.slow
def test_esm2_650m_loads_and_encodes_a_real_sequence(hub_cache: Path, shared_dir: Path) -> None:
    name = "esm2_t33_650M_UR50D"
    write_random_checkpoint(name, hub_cache)
    loaded = load_esm(name, device="cpu")
    assert (loaded.num_layers, loaded.embed_dim, loaded.model.attention_heads) == (33, 1280, 20)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 600e6 < n_params < 700e6
    seq = human_proteins(shared_dir, 1)[0]["sequence"][:200]
    reps = embed_sequences(loaded, [seq], [24])[0][24]
    assert reps.shape == (len(seq), 1280) and np.isfinite(reps).all()


SEED_CONFIG = PROJECT_ROOT / "configs" / "seed-esm2-35m.toml"


def test_the_three_recipes_load_with_their_papers_settings(shared_dir: Path) -> None:
    """The configs validate and say what ../shared/docs/peers.md records of each recipe."""
    from trainer.config import load_config

    settings = Settings(shared_dir=shared_dir)
    seed = load_config(SEED_CONFIG, settings)
    assert seed.embed.model == "esm2_t12_35M_UR50D"
    assert [(s.kind, s.level, s.layer, s.out_layer, s.n_latents, s.k, s.dead_threshold)
            for s in seed.saes] == [
        ("topk", "protein", 8, None, 20000, 64, 200),
        ("transcoder", "protein", 8, 9, 20000, 64, 200),
        ("topk", "residue", 10, None, 20000, 16, 50)]  # fmt: skip
    assert all(s.normalisation == "layer_norm" and s.lr == 1e-4 and s.batch_size == 128
               for s in seed.saes)  # fmt: skip
    assert seed.neurons.layers == [8] and seed.go.namespaces == ["BP"]
    assert seed.go.methods == ["bonferroni"] and seed.go.active_threshold == 0.0
    bins = seed.explain.bins
    assert seed.explain.n_features == 200 and bins.per_bin == [2, 3, 3, 3, 6]
    assert (bins.n_active, bins.n_inactive, bins.min_active) == (17, 15, 34)
    assert [p.name for p in seed.ingest.protein_tsvs] == ["human_sprot2014.tsv.gz"]

    interplm = load_config(PROJECT_ROOT / "configs" / "interplm-esm2-8m.toml", settings)
    assert interplm.embed.model == "esm2_t6_8M_UR50D"
    assert [(s.kind, s.level, s.layer, s.n_latents) for s in interplm.saes] == [
        ("relu_l1", "residue", layer, 10240) for layer in range(1, 7)]  # fmt: skip
    assert interplm.concepts is not None
    assert interplm.concepts.thresholds == (0.0, 0.15, 0.5, 0.6, 0.8)

    interprot = load_config(PROJECT_ROOT / "configs" / "interprot-esm2-650m.toml", settings)
    assert interprot.embed.model == "esm2_t33_650M_UR50D"
    ((spec),) = interprot.saes
    assert (spec.kind, spec.level, spec.layer, spec.n_latents) == ("topk", "residue", 24, 4096)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a few CPU minutes; a machine shared by ~9 sessions stretches the wall
def test_the_seed_recipe_at_full_width_end_to_end(
    hub_cache: Path, tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/seed-esm2-35m.toml's dictionaries as configured (20,000 latents on 480 dims, k 64 and
    16) on the 35M architecture, shortened only in corpus (short human proteins), steps and
    effects examples: ingest → publish, then the server encodes a sequence with the protein-level
    SAE."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.store import migrate
    from trainer.config import load_config
    from trainer.pipeline import Pipeline

    write_random_checkpoint("esm2_t12_35M_UR50D", hub_cache)
    settings = Settings(data_dir=tmp_path / "data", shared_dir=shared_dir)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate.upgrade(url)
    recipe = load_config(SEED_CONFIG, settings)
    assert [(s.layer, s.out_layer, s.n_latents, s.k) for s in recipe.saes] == [
        (8, None, 20000, 64), (8, 9, 20000, 64), (10, None, 20000, 16)]  # fmt: skip
    short = {"steps": 5, "eval_every": 5, "checkpoint_every": 5}
    cfg = recipe.model_copy(update={
        "run": recipe.run.model_copy(update={"torch_threads": 2}),
        "ingest": recipe.ingest.model_copy(update={"max_proteins": 160, "max_length": 100}),
        "saes": [s.model_copy(update=short) for s in recipe.saes],
        "loss": recipe.loss.model_copy(update={"n_proteins": 4, "max_length": 80}),
        "go": recipe.go.model_copy(update={"workers": 1}),
        # One example per feature for the effects readout (two 35M forwards each): at 3 per
        # feature it was ~500 of the test's ~800 s on 2 busy cores; the readout's maths is
        # tested against two steerings in tests/test_intervene.py.
        "effects": recipe.effects.model_copy(update={"examples_per_feature": 1}),
        # The UMAP feature map (numba-compiled on first use) is left to tests/test_pipeline.py.
        "analyze": recipe.analyze.model_copy(update={
            "map": recipe.analyze.map.model_copy(update={"enabled": False})}),
    })  # fmt: skip
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # explain: offline labels only
    pipeline = Pipeline(cfg, settings, database_url=url)
    run_id = pipeline.run()
    assert run_id is not None
    manifest = json.loads((pipeline.workdir / "embeddings" / "manifest.json").read_text())
    assert manifest["d_model"] == 480 and manifest["num_layers"] == 12
    assert manifest["residue_layers"] == [10] and manifest["layers"] == [8, 9, 10]
    for spec in cfg.saes:
        metrics = json.loads((pipeline.workdir / "saes" / spec.name / "metrics.json").read_text())
        assert metrics["l0"] <= spec.k
    go = json.loads((pipeline.workdir / "go" / "L8-protein-topk" / "summary.json").read_text())
    assert go["config"]["namespaces"] == ["BP"] and go["config"]["methods"] == ["bonferroni"]

    served = settings.model_copy(update={"database_url": url, "device": "cpu"})
    with TestClient(create_app(served)) as client:
        (run,) = client.get("/api/v1/runs").json()
        saes = {s["name"]: s for s in run["saes"]}
        protein = saes["L8-protein-topk"]
        assert protein["n_latents"] == 20000 and protein["d_in"] == 480
        sequence = pipeline.corpus.sequences[0]
        response = client.post(
            "/api/v1/encode",
            json={"sae_id": protein["id"], "sequences": [sequence], "top_n": 100},
        )
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["provenance"]["layer"] == 8 and data["level"] == "protein"
        (result,) = data["results"]
        assert result["length"] == len(sequence)
        assert 0 < result["n_active_features"] <= 64
