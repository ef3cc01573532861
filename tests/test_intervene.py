"""Steering and variant effects on the real mini ESM2 and the tiny run's trained SAEs.

The split forward equals fair-esm's; a steering that changes no code value changes no logit; the
edited stream is the steered reconstruction plus the SAE's error (checked against the explicit
formula); variant scores equal fair-esm's masked-marginal formula computed here independently;
every bad input is a 4xx naming what is wrong."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.esm import tokenize
from app.intervene.forward import hidden_at, logits_from
from app.intervene.steer import AMINO_ACIDS, Intervention, SteerError, edit_stream, steer
from app.intervene.variants import (
    VariantError,
    masked_log_probs,
    masked_marginal_score,
    mutant_sequence,
    parse_variant,
)
from app.sae import load_dictionary
from app.store.schema import Feature, Protein, Sae, TopExample
from tests.apps import app_for
from tests.encode_fixtures import human_proteins
from tests.tiny_run import TinyRun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sequences(shared_dir: Path) -> list[str]:
    return [row["sequence"] for row in human_proteins(shared_dir, 3, 60, 180)]


def _sae(tiny_run: TinyRun, name: str) -> tuple[int, Any]:
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        sae = session.scalars(
            select(Sae).where(Sae.run_id == tiny_run.run_id, Sae.name == name)
        ).one()
        sae_id, path = sae.id, Path(sae.weights_path or "")
    engine.dispose()
    return sae_id, load_dictionary(path if path.is_dir() else path.parent, device="cpu").eval()


@pytest.mark.parametrize("attention", ["fair-esm", "fused"])
def test_split_forward_is_the_models_forward(
    loaded: Any, sequences: list[str], attention: str
) -> None:
    model = dataclasses.replace(loaded, attention=attention)
    tokens = tokenize(model, sequences)  # padded batch: the mask path runs too
    with torch.inference_mode():
        reference = model.model(tokens)["logits"]
        for layer in range(model.num_layers + 1):
            got = logits_from(model, hidden_at(model, tokens, layer), tokens, layer)
            if attention == "fair-esm":
                assert torch.equal(got, reference), f"layer {layer}"
            else:
                torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "name,level", [("L3-residue-topk", "residue"), ("L3-protein-topk", "protein")]
)
def test_an_unchanged_code_changes_no_logit(
    tiny_run: TinyRun, loaded: Any, sequences: list[str], name: str, level: str
) -> None:
    _, sae = _sae(tiny_run, name)
    seq = sequences[0]
    step = max(1, sae.n_latents // 30)  # 30 latents: active ones and silent ones
    no_ops = [Intervention(f, "scale", 1.0) for f in range(0, sae.n_latents, step)][:32]
    result = steer(loaded, sae, level, 3, seq, no_ops)
    assert np.array_equal(result.log_p_after, result.log_p_before)
    assert np.array_equal(result.feature_after, result.feature_before)
    with torch.inference_mode():
        logits = loaded.model(tokenize(loaded, [seq]))["logits"][0, 1 : len(seq) + 1]
    ids = [loaded.alphabet.get_idx(a) for a in AMINO_ACIDS]
    expected = torch.log_softmax(logits.float(), -1)[:, ids].numpy()
    np.testing.assert_allclose(result.log_p_before, expected, atol=1e-4)


def test_the_edited_stream_is_the_steered_reconstruction_plus_the_error(
    tiny_run: TinyRun, loaded: Any, sequences: list[str]
) -> None:
    _, sae = _sae(tiny_run, "L3-residue-topk")
    tokens = tokenize(loaded, sequences[:1])
    with torch.inference_mode():
        x = hidden_at(loaded, tokens, 3)[0, 1:-1]
        z = sae.encode(x)
        feature = int(z.sum(0).argmax())
        peak = int(z[:, feature].argmax())
        item = Intervention(feature, "clamp", 5.0, (peak, peak + 1))
        edited, before, after = edit_stream(sae, "residue", x, [item])
        _, stats = sae.normalise(x)
        steered = z.clone()
        steered[[peak, peak + 1], feature] = 5.0
        expected = sae.decode(steered, stats) + (x - sae.decode(z, stats))
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)
    untouched = [i for i in range(x.shape[0]) if i not in (peak, peak + 1)]
    assert torch.equal(edited[untouched], x[untouched])
    assert float(before[peak, 0]) == pytest.approx(float(z[peak, feature]))
    assert float(after[peak, 0]) > 0  # the SAE reads the clamped feature back


def test_ablating_a_feature_changes_predictions_where_it_fires(
    tiny_run: TinyRun, loaded: Any, sequences: list[str]
) -> None:
    _, sae = _sae(tiny_run, "L3-residue-topk")
    seq = sequences[1]
    with torch.inference_mode():
        z = sae.encode(hidden_at(loaded, tokenize(loaded, [seq]), 3)[0, 1:-1])
    feature = int(z.sum(0).argmax())
    active = torch.nonzero(z[:, feature]).ravel().tolist()
    result = steer(loaded, sae, "residue", 3, seq, [Intervention(feature, "ablate")], active[:2])
    delta = np.abs(result.log_p_after - result.log_p_before).max(axis=1)
    assert delta[active].max() > 0
    assert set(result.masked) == set(active[:2])
    for before, after in result.masked.values():
        assert before.shape == after.shape == (20,)


def test_steering_refuses_what_it_cannot_do(
    tiny_run: TinyRun, loaded: Any, sequences: list[str]
) -> None:
    _, sae = _sae(tiny_run, "L3-residue-topk")
    _, transcoder = _sae(tiny_run, "L3to4-protein-transcoder")
    seq = sequences[0]
    with pytest.raises(SteerError, match="transcoder"):
        steer(loaded, transcoder, "protein", 3, seq, [Intervention(0, "ablate")])
    with pytest.raises(SteerError, match=r"feature 99999 outside"):
        steer(loaded, sae, "residue", 3, seq, [Intervention(99999, "ablate")])
    with pytest.raises(SteerError, match="clamp needs a finite value"):
        steer(loaded, sae, "residue", 3, seq, [Intervention(0, "clamp", float("nan"))])
    with pytest.raises(SteerError, match=rf"outside 1..{len(seq)}"):
        steer(loaded, sae, "residue", 3, seq, [Intervention(0, "ablate", None, (len(seq),))])


def test_variant_notation_is_checked_against_the_wild_type() -> None:
    wt = "MKTAYIAKQR"
    variant = parse_variant("A4V:p.K8E", wt)
    assert mutant_sequence(wt, variant)[0] == "MKTVYIAEQR"
    deleted, origin = mutant_sequence(wt, parse_variant("del3_5", wt))
    assert deleted == "MKIAKQR" and origin.tolist() == [0, 1, 5, 6, 7, 8, 9]
    for text, message in [
        ("A5V", "the wild type has Y at 5, not A"),
        ("A40V", "position 40 outside 1..10"),
        ("A4", "cannot read 'A4'"),
        ("A4A", "no change"),
        ("A4V;del3_5", "overlap"),
        ("del1_10", "whole sequence"),
    ]:
        with pytest.raises(VariantError, match=message):
            parse_variant(text, wt)


def test_masked_marginals_equal_fair_esms_formula(loaded: Any, sequences: list[str]) -> None:
    wt = sequences[2]
    picks = [5, 17, 40]
    texts = [f"{wt[p - 1]}{p}{'W' if wt[p - 1] != 'W' else 'A'}" for p in picks]
    variants = [parse_variant(t, wt) for t in texts]
    log_probs = masked_log_probs(loaded, wt, picks)
    reference = dataclasses.replace(loaded, attention="fair-esm")
    _, _, tokens = reference.batch_converter([("wt", wt)])
    for p, variant in zip(picks, variants, strict=True):
        masked = tokens.clone()
        masked[0, p] = loaded.alphabet.mask_idx  # position p (1-based) is token p after BOS
        with torch.inference_mode():
            lp = torch.log_softmax(reference.model(masked)["logits"][0, p].float(), -1)
        sub = variant.substitutions[0]
        expected = float(
            lp[loaded.alphabet.get_idx(sub.mutant)] - lp[loaded.alphabet.get_idx(sub.wild_type)]
        )
        assert masked_marginal_score(loaded, variant, log_probs) == pytest.approx(
            expected, abs=1e-4
        )
    double = parse_variant(f"{texts[0]}:{texts[1]}", wt)
    single = [masked_marginal_score(loaded, v, log_probs) for v in variants[:2]]
    assert masked_marginal_score(loaded, double, log_probs) == pytest.approx(sum(single))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun) -> Iterator[TestClient]:
    with TestClient(app_for(tiny_run.url)) as test_client:
        yield test_client


def test_steer_api_answers_per_position(
    client: TestClient, tiny_run: TinyRun, sequences: list[str]
) -> None:
    sae_id, _ = _sae(tiny_run, "L3-residue-topk")
    seq = sequences[0]
    body = {"sae_id": sae_id, "sequence": seq.lower(),
            "interventions": [{"feature": 0, "mode": "clamp", "value": 8.0, "positions": "3-6,10"}],
            "masked_positions": [4]}  # fmt: skip
    response = client.post("/api/v1/steer", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["sequence"] == seq and data["amino_acids"] == AMINO_ACIDS
    assert len(data["positions"]) == len(seq) and len(data["steered_sequence"]) == len(seq)
    first = data["positions"][2]
    assert first["position"] == 3 and len(first["log_p_after"]) == 20
    assert first["feature_before"] is not None and len(first["top_substitutions"]) == 3
    assert data["masked"][0]["position"] == 4
    changed = [p["position"] for p in data["positions"] if p["argmax_after"] != p["argmax_before"]]
    assert changed == data["changed_positions"]


def test_feature_page_steers_an_example_by_accession(client: TestClient, tiny_run: TinyRun) -> None:
    """The feature page's steer links name the example's protein (not its whole sequence, which
    made the heaviest page 23 KB larger); /steer shows that protein's stored sequence."""
    sae_id, _ = _sae(tiny_run, "L3-residue-topk")
    engine = create_engine(tiny_run.url)
    with Session(engine) as session:
        feature, accession, sequence = session.execute(
            select(Feature.id, Protein.accession, Protein.sequence)
            .join(TopExample, TopExample.feature_id == Feature.id)
            .join(Protein, Protein.id == TopExample.protein_id)
            .where(Feature.sae_id == sae_id).limit(1)
        ).one()  # fmt: skip
    engine.dispose()
    page = client.get(f"/features/{feature}").text
    links = re.findall(r'class="steer-link" href="([^"]+)"', page)
    assert links and all("accession=" in link and "sequence=" not in link for link in links)
    assert f"accession={accession}" in page
    steer = client.get(f"/steer?sae_id={sae_id}&feature=0&accession={accession}")
    assert steer.status_code == 200 and f">{sequence}</textarea>" in steer.text
    missing = client.get(f"/steer?sae_id={sae_id}&accession=NOPE0")
    assert missing.status_code == 404 and "NOPE0" in missing.text


def test_variants_api_scores_and_diffs(
    client: TestClient, tiny_run: TinyRun, sequences: list[str]
) -> None:
    sae_id, _ = _sae(tiny_run, "L3-residue-topk")
    wt = sequences[1]
    body = {"sae_id": sae_id, "sequence": wt,
            "variants": [f"{wt[9]}10W" if wt[9] != "W" else f"{wt[9]}10A", "del20_25"]}  # fmt: skip
    response = client.post("/api/v1/variants", json=body)
    assert response.status_code == 200, response.text
    substitution, deletion = response.json()["variants"]
    assert substitution["score"] == pytest.approx(substitution["substitutions"][0]["score"])
    assert deletion["score"] is None and deletion["mutant_length"] == len(wt) - 6
    for change in deletion["top_changes"]:
        assert len(change["track"]) == len(wt)
        assert all(v is None for v in change["track"][19:25])


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        ("/api/v1/variants", {"variants": ["Q3V"]}, 422, "Q3V: the wild type has"),
        ("/api/v1/variants", {"variants": ["M1W", "nonsense"]}, 422, "cannot read 'nonsense'"),
        ("/api/v1/variants", {"variants": ["A9999V"]}, 422, "position 9999 outside"),
        ("/api/v1/steer", {"interventions": [{"feature": 10**6, "mode": "ablate"}]}, 422, "outside 0.."),
        ("/api/v1/steer", {"interventions": [{"feature": 1, "mode": "scale"}]}, 422, "scale needs a finite value"),
        ("/api/v1/steer", {"interventions": [{"feature": 1, "mode": "ablate", "positions": "9-2"}]}, 422, "runs backwards"),
        ("/api/v1/steer", {"sequence": "MK1T", "interventions": [{"feature": 1, "mode": "ablate"}]}, 422, "invalid character '1'"),
        ("/api/v1/steer", {"sae_id": 999999, "interventions": [{"feature": 1, "mode": "ablate"}]}, 404, "no published SAE"),
    ],
)  # fmt: skip
def test_bad_input_is_a_4xx_naming_it(
    client: TestClient,
    tiny_run: TinyRun,
    path: str,
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    sae_id, _ = _sae(tiny_run, "L3-residue-topk")
    full = {"sae_id": sae_id, "sequence": "MKTAYIAKQRQISFVKSHFSRQ", **body}
    response = client.post(path, json=full)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_a_full_gate_answers_503_with_retry_after(client: TestClient, tiny_run: TinyRun) -> None:
    from app.routes.intervene import Gate

    sae_id, _ = _sae(tiny_run, "L3-residue-topk")
    gate = client.app.state.intervene_gate = Gate(1)  # type: ignore[attr-defined]
    body = {
        "sae_id": sae_id,
        "sequence": "MKTAYIAKQR",
        "interventions": [{"feature": 1, "mode": "ablate"}],
    }
    try:
        with gate.slot():
            response = client.post("/api/v1/steer", json=body)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert client.post("/api/v1/steer", json=body).status_code == 200
    finally:
        del client.app.state.intervene_gate  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name,level", [("L3-residue-topk", "residue"), ("L3-protein-topk", "protein")]
)
def test_feature_effects_equal_two_steerings(
    tiny_run: TinyRun, loaded: Any, name: str, level: str
) -> None:
    """The trainer's per-feature effect (trainer/effects.py, its own edit of the stream) equals
    the steering path's answer for the same intervention: the feature clamped to its typical
    activation minus it ablated, at the example's peak residue (residue level) or everywhere and
    averaged over the residues (protein level), averaged over the feature's examples."""
    analysis = tiny_run.pipeline.workdir / "analysis" / name
    effects = np.load(analysis / "effects.npz")
    examples = np.load(analysis / "examples.npz")
    assert str(effects["read_at"]) == ("peak residue" if level == "residue" else "protein mean")
    _, sae = _sae(tiny_run, name)
    measured = np.flatnonzero(effects["n_examples"] > 0)
    assert measured.size > 0
    sequences = tiny_run.pipeline.corpus.sequences
    cap = tiny_run.pipeline.cfg.effects.examples_per_feature
    for f in measured[:: max(1, measured.size // 3)][:3]:
        rows = np.flatnonzero(
            (examples["feature"] == f) & (examples["bin"] == "top") & (examples["rank"] < cap)
        )
        typical = float(effects["activation"][f])
        deltas = []
        for r in rows:
            seq = sequences[int(examples["protein"][r])]
            where = None if level == "protein" else (int(examples["max_position"][r]),)
            on = steer(loaded, sae, level, 3, seq, [Intervention(int(f), "clamp", typical, where)])
            off = steer(loaded, sae, level, 3, seq, [Intervention(int(f), "ablate", None, where)])
            delta = on.log_p_after - off.log_p_after
            deltas.append(delta.mean(axis=0) if level == "protein" else delta[where[0]])  # type: ignore[index]
        assert len(deltas) == effects["n_examples"][f]
        np.testing.assert_allclose(effects["mean"][f], np.mean(deltas, axis=0), atol=2e-3)
