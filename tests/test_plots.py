"""Findings figures render real SVG from real numbers computed here on the mini ESM2 model.

- concepts: the concepts stage on real labels with ReLU'd neurons of layers 2 and 4;
- fidelity: two real 'dictionaries' of layer 4 (ReLU'd neurons; top-16 neurons per residue)
  scored against the raw layer (FVE, L0, dead fraction; no LM loss → shown as n/a);
- GO: a small real enrichment (hypergeometric, BH and Bonferroni) of mean-pooled neurons over
  300 human Swiss-Prot proteins against their as-annotated BP terms, with a protein-shuffled
  control; levels from the real go-basic.obo;
- Pearson r: each neuron's correlation with the proteins' mean Kyte–Doolittle hydropathy (a
  real protein property standing in for explanation scores, which need the explain stage).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.findings.plots import (
    FigureInputs,
    plot_concept_f1,
    plot_explanation_r,
    plot_fold_enrichment,
    plot_go_hit_rates,
    plot_go_hits_per_level,
    plot_sae_fidelity,
)
from tests.esm_activations import CachingEncoder
from tests.go_real import enrich_columns, go_levels, summarize
from tests.realdata import KYTE_DOOLITTLE, human_proteins
from trainer.concepts import ConceptsConfig, run_concepts_stage
from trainer.concepts.neurons import EsmNeurons

MODEL_NAME = "esm2_t4_2M_sprot14mini"
CONCEPTS = ["gpsite_ZN", "gpsite_DNA", "scannet_PIDPBS"]
N_PROTEINS, CROP = 300, 128


@pytest.fixture(scope="module")
def neurons(shared_dir: Path) -> EsmNeurons:
    torch.set_num_threads(1)
    return EsmNeurons(shared_dir / "models" / f"{MODEL_NAME}.pt", [2, 4])


@pytest.fixture(scope="module")
def concept_run(
    shared_dir: Path, neurons: EsmNeurons, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, dict[str, Any]], CachingEncoder]:
    cfg = ConceptsConfig(
        label_dir=shared_dir / "data/residue_annotations", concepts=CONCEPTS, max_chains_per_split=8
    )
    encoders = {"neurons_L2": CachingEncoder(neurons, 2), "neurons_L4": CachingEncoder(neurons, 4)}
    summaries = run_concepts_stage(
        tmp_path_factory.mktemp("run"),
        cfg,
        encode_residues=dict(encoders),
        dictionaries=list(encoders),
    )
    return summaries, encoders["neurons_L4"]


def _svg_ok(svg: str, *texts: str) -> None:
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    for text in texts:
        assert text in svg, text


def test_concept_f1_figure(concept_run: tuple[dict[str, dict[str, Any]], CachingEncoder]) -> None:
    summaries, _ = concept_run
    n_chains = sum(summaries["neurons_L4"]["corpus"][r]["n_chains"] for r in ("train", "test"))
    inputs = FigureInputs(
        "test-concepts", MODEL_NAME, f"{len(CONCEPTS)} concepts, {n_chains} chains"
    )
    svg = plot_concept_f1(list(summaries.values()), inputs, link=lambda d, f: f"/features/{d}/{f}")
    _svg_ok(svg, "run test-concepts", MODEL_NAME, f"{n_chains} chains", *CONCEPTS)
    assert "fire everywhere (test F1)" in svg  # the baseline beside each concept
    best = summaries["neurons_L4"]["best_per_concept"][0]
    assert f'href="/features/neurons_L4/{best["feature"]}"' in svg
    assert (
        f"neurons_L4 ({summaries['neurons_L4']['n_concepts_associated']} concepts &gt; 0.5)" in svg
    )


def test_fidelity_figure(
    concept_run: tuple[dict[str, dict[str, Any]], CachingEncoder], neurons: EsmNeurons
) -> None:
    sequences = list(concept_run[1].cache)[:40]
    full = np.concatenate(
        [r for i in range(0, 40, 8) for r in neurons.representations(sequences[i : i + 8])[4]]
    )  # the signed layer-4 residual stream: the target every dictionary reconstructs
    sst = ((full - full.mean(0)) ** 2).sum()

    def fidelity(name: str, latents: np.ndarray) -> dict[str, Any]:
        sse = ((full - latents) ** 2).sum()
        return {
            "dictionary": name,
            "fve": float(1 - sse / sst),
            "l0": float((latents > 0).sum(1).mean()),
            "dead_fraction": float((latents.max(0) <= 0).mean()),
            "loss_recovered": None,
        }

    relu = np.maximum(full, 0)
    top = np.where(relu >= np.sort(relu, axis=1)[:, [-16]], relu, 0.0)
    metrics = [fidelity("neurons_L4", relu), fidelity("top16_L4", top)]
    assert metrics[1]["l0"] <= 16 and metrics[1]["fve"] < metrics[0]["fve"] < 1
    inputs = FigureInputs("test-fidelity", MODEL_NAME, f"{len(full)} residues")
    svg = plot_sae_fidelity(metrics, inputs)
    _svg_ok(svg, "SAE fidelity", "n/a", f"{metrics[0]['fve']:.3g}", f"{len(full)} residues")


# --- GO: a small, real enrichment (tests/go_real.py) -------------------------------------------


def enrich(acts: np.ndarray, annotations: list[set[str]], levels: dict[str, int]) -> dict[str, Any]:
    cols = enrich_columns(acts, annotations)
    return {
        **summarize(cols, acts.shape[1], levels),
        "fold_enrichment": cols["fold_enrichment"][cols["q_value"] < 0.05].tolist(),
    }


@pytest.fixture(scope="module")
def pooled(shared_dir: Path, neurons: EsmNeurons) -> dict[str, Any]:
    rows = [r for r in human_proteins(shared_dir, 2 * N_PROTEINS) if r["go_bp"]][:N_PROTEINS]
    seqs = [re.sub(r"[^ACDEFGHIKLMNPQRSTVWY]", "X", r["sequence"][:CROP]) for r in rows]
    out: dict[int, list[np.ndarray]] = {2: [], 4: []}
    for i in range(0, len(seqs), 16):
        reps = neurons.representations(seqs[i : i + 16])
        for layer in out:
            out[layer] += [np.maximum(r, 0).mean(0) for r in reps[layer]]
    hydropathy = np.array([np.mean([KYTE_DOOLITTLE.get(a, 0.0) for a in s]) for s in seqs])
    return {
        "rows": rows,
        "acts": {layer: np.stack(v) for layer, v in out.items()},
        "hydropathy": hydropathy,
    }


@pytest.mark.slow
def test_go_figures(shared_dir: Path, pooled: dict[str, Any]) -> None:
    levels = go_levels(shared_dir / "data/go/go-basic.obo.gz")
    annotations = [set(r["go_bp"].split(";")) for r in pooled["rows"]]
    perm = np.random.default_rng(0).permutation(len(annotations))
    summaries = [
        {"dictionary": "neurons_L2", **enrich(pooled["acts"][2], annotations, levels)},
        {"dictionary": "neurons_L4", **enrich(pooled["acts"][4], annotations, levels)},
        {
            "dictionary": "neurons_L4 shuffled control",
            **enrich(pooled["acts"][4][perm], annotations, levels),
        },
    ]
    assert summaries[1]["n_tests"] > 10_000
    inputs = FigureInputs("test-go", MODEL_NAME, f"{N_PROTEINS} human proteins, BP as annotated")
    line = f"{N_PROTEINS} human proteins"
    svg = plot_go_hit_rates(summaries, inputs, link=lambda d, _: f"/go/{d}")
    _svg_ok(svg, line, "Bonferroni", 'href="/go/neurons_L4"')
    assert "diamonds" not in svg  # no active-feature rate given: no diamond, no caption for it
    summaries[0]["bh"] = {**summaries[0]["bh"], "pct_active_features_with_hit": 50.0}
    _svg_ok(plot_go_hit_rates(summaries, inputs), "diamonds: BH over the features that fire")
    _svg_ok(plot_go_hits_per_level(summaries, inputs), line, "GO level")
    _svg_ok(plot_fold_enrichment(summaries, inputs), line, "fold enrichment")
    # A 4-layer run has 14 dictionaries: the hit-rate bars grow downwards (height), not into
    # an unreadable strip, and every dictionary keeps its own row label.
    many = [{**s, "dictionary": f"{s['dictionary']} #{k}"} for k in range(5) for s in summaries[:3]]
    big = plot_go_hit_rates(many[:14], inputs)
    assert _height_pt(big) > 2.5 * _height_pt(plot_go_hit_rates(summaries, inputs))
    _svg_ok(big, *[s["dictionary"] for s in many[:14]])
    _svg_ok(plot_go_hits_per_level(many[:14], inputs), "neurons_L2 #4")


def _height_pt(svg: str) -> float:
    match = re.search(r'<svg[^>]*height="([0-9.]+)pt"', svg)
    assert match, "no height on the SVG"
    return float(match.group(1))


def test_pearson_r_figure(pooled: dict[str, Any]) -> None:
    h = pooled["hydropathy"]
    summaries = []
    for layer in (2, 4):
        acts = pooled["acts"][layer]
        live = acts.std(0) > 0
        r = [float(np.corrcoef(a, h)[0, 1]) for a in acts.T[live]]
        summaries.append({"dictionary": f"neurons_L{layer}", "pearson_r": r})
    assert max(abs(v) for v in summaries[1]["pearson_r"]) > 0.3  # hydropathy is encoded
    inputs = FigureInputs("test-r", MODEL_NAME, f"{N_PROTEINS} proteins, r vs hydropathy")
    svg = plot_explanation_r(summaries, inputs)
    median = np.median(summaries[0]["pearson_r"])
    _svg_ok(svg, "Pearson r", f"median {median:.2f}", "r vs hydropathy")
