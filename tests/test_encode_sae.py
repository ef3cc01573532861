"""A real trained TopK SAE (mini ESM2 layer 3, residue level) through encode and export."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.esm import embed_sequences, forward_representations, load_esm
from app.sae import (
    Provenance,
    TopKSAE,
    fraction_variance_explained,
    load_dictionary,
    save_dictionary,
    sequence_fve,
)
from app.store import migrate
from app.store.engine import make_engine
from app.store.publish import publish_run
from app.store.schema import Run, Sae
from tests.apps import app_for
from tests.encode_fixtures import human_proteins

pytestmark = pytest.mark.slow
LAYER = 3
MODEL_SHA = "d4f0b41a6dbb4887b73832bcf982b042f4cf61a69485ba982f79156b357a2986"


def train_sae(shared: Path, out: Path) -> tuple[Path, float, list[str]]:
    """TopK SAE (192 -> 768, k 16) fit for a few hundred steps on real residue activations."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    loaded = load_esm(shared / "models/esm2_t4_2M_sprot14mini.pt", device="cpu")
    rows = human_proteins(shared, 90, 60, 300)
    seqs = [r["sequence"] for r in rows]
    acts = embed_sequences(loaded, seqs[:80], [LAYER])
    x = torch.from_numpy(np.concatenate([a[LAYER] for a in acts]))
    sae = TopKSAE(192, 768, 16)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-3)
    for _ in range(300):
        batch = x[torch.randint(0, x.shape[0], (512,))]
        loss, _, _ = sae.training_loss(batch, batch, None)
        opt.zero_grad()
        loss.backward()
        sae.constrain_gradients()
        opt.step()
        sae.constrain_weights()
    sae.eval()
    with torch.no_grad():
        fves = [
            fraction_variance_explained(
                sae(torch.from_numpy(a[LAYER]))[0], torch.from_numpy(a[LAYER])
            )
            for a in acts
        ]
    prov = Provenance("esm2_t4_2M_sprot14mini", MODEL_SHA, LAYER, None, "residue", "layer_norm")
    save_dictionary(sae, out, prov)
    return out, float(np.median(fves)), seqs[80:]


@pytest.fixture(scope="module")
def sae_client(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, int, Path, float, list[str]]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("sae")
    directory, median, held_out = train_sae(shared_dir, tmp / "L3-topk")
    url = f"sqlite:///{tmp / 'store.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    info: dict[str, int] = {}

    def load(session, run):  # type: ignore[no-untyped-def]
        sae = Sae(run_id=run.id, name="L3-topk", kind="topk", level="residue", layer=LAYER,
                  d_in=192, n_latents=768, k=16, fve=median, metrics={"fve_median": median},
                  weights_path=str(directory))  # fmt: skip
        session.add(sae)
        session.flush()
        info["sae_id"] = sae.id

    run = Run(name="sae-test", base_model="esm2_t4_2M_sprot14mini", checkpoint_sha256=MODEL_SHA,
              layer=LAYER, corpus="human_sprot2014 (80 proteins)", n_proteins=80)  # fmt: skip
    publish_run(engine, run, load)
    engine.dispose()
    with TestClient(app_for(url)) as client:
        yield client, info["sae_id"], directory, median, held_out


def test_encode_with_a_trained_sae(sae_client) -> None:  # type: ignore[no-untyped-def]
    client, sae_id, _, median, held_out = sae_client
    body = {"sae_id": sae_id, "sequences": held_out[:2], "top_n": 1000}
    data = client.post("/api/v1/encode", json=body).json()
    assert data["provenance"]["sae_kind"] == "topk"
    for result in data["results"]:
        quality = result["quality"]
        assert quality["training_median_fve"] == pytest.approx(median)
        assert 0.0 < quality["fve"] <= 1.0 and quality["warning"] is None  # held-out, in range
        values = np.array([f["values"] for f in result["features"]])  # [active, L]
        assert ((values > 0).sum(axis=0) <= 16).all()  # TopK: at most k latents per residue
    # Far out of distribution: a homopolymer.
    odd = client.post("/api/v1/encode", json={"sae_id": sae_id, "sequences": ["W" * 120]}).json()
    assert "out of distribution" in (odd["results"][0]["quality"]["warning"] or "")


def test_encode_equals_the_dense_definition(
    sae_client: tuple[TestClient, int, Path, float, list[str]], shared_dir: Path
) -> None:
    """The served numbers are the dense ones: ESM2's forward at the layer (with the server's
    attention kernel; fair-esm's own full forward up to float rounding), ``forward``'s latents,
    numpy's max and mean over residues (bit for bit), and the FVE of the dense decode."""
    client, sae_id, directory, _, held_out = sae_client
    seq = held_out[2]
    body = {"sae_id": sae_id, "sequences": [seq], "top_n": 1000}
    result = client.post("/api/v1/encode", json=body).json()["results"][0]
    loaded = load_esm(shared_dir / "models/esm2_t4_2M_sprot14mini.pt", device="cpu")
    sae = load_dictionary(directory, device="cpu").eval()
    with torch.inference_mode():
        tokens = loaded.batch_converter([("x", seq)])[2]
        reps = forward_representations(loaded.model, tokens, [LAYER], loaded.attention)
        x = reps[LAYER][0, 1:-1]
        library = loaded.model(tokens, repr_layers=[LAYER])["representations"][LAYER][0, 1:-1]
        torch.testing.assert_close(x, library, rtol=1e-4, atol=1e-4)
        recon, z = sae(x)
    z_np = z.numpy()
    pooled, mean = z_np.max(axis=0), z_np.mean(axis=0)
    features = result["features"]
    assert [f["index"] for f in features] == [int(i) for i in np.argsort(-pooled, kind="stable")
                                              if pooled[i] > 0]  # fmt: skip
    for f in features:
        assert f["max"] == float(pooled[f["index"]]) and f["mean"] == float(mean[f["index"]])
        column = z_np[:, f["index"]]
        assert f["values"] == np.round(column, 4).astype(float).tolist()
        assert f["n_active_residues"] == int((column > 0).sum())
        assert f["max_position"] == int(column.argmax())
    assert result["quality"]["fve"] == pytest.approx(sequence_fve(x, recon), abs=1e-6)


def test_weights_and_saelens_export(sae_client) -> None:  # type: ignore[no-untyped-def]
    client, sae_id, directory, _, _ = sae_client
    weights = client.get(f"/api/v1/saes/{sae_id}/weights.safetensors")
    assert weights.status_code == 200
    assert weights.content == (directory / "sae.safetensors").read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/saes/{sae_id}/saelens.zip").content))
    names = sorted(archive.namelist())
    assert [n.split("/")[-1] for n in names] == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads(archive.read(names[0]))
    assert cfg["architecture"] == "topk" and cfg["k"] == 16 and cfg["d_in"] == 192
    assert cfg["metadata"]["checkpoint_sha256"] == MODEL_SHA
    tensors = load_file(str(directory / "sae.safetensors"))
    exported = archive.read(names[1])
    assert len(exported) > 4 * sum(t.numel() for t in tensors.values()) * 0.9
