"""Training on real ESM2 activations: the dictionaries learn, resume is exact, the stage resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.esm import resolve_device
from app.sae import NeuronBasis, Provenance, Transcoder, load_dictionary
from tests.real_embeddings import RealActivations, cached_real_activations
from trainer.train import SaeSpec, evaluate, run_train, train_dictionary

N_TRAIN = 240  # of 300 real proteins; the last 60 are held out


@pytest.fixture(scope="module")
def acts(request: pytest.FixtureRequest, shared_dir: Path) -> RealActivations:
    return cached_real_activations(request.config, shared_dir)


def _spec(**kw: Any) -> SaeSpec:
    base: dict[str, Any] = dict(level="protein", layer=3, expansion=4, steps=600, lr=4e-4,
                                batch_size=64, dead_threshold=50, eval_every=100)  # fmt: skip
    return SaeSpec(**(base | kw))


def _mean_baseline_fve(x: np.ndarray) -> float:
    """FVE of predicting every held-out vector by the training mean: the trivial baseline."""
    mean = x[:N_TRAIN].mean(axis=0)
    val = x[N_TRAIN:]
    return 1 - float(((val - mean) ** 2).sum() / ((val - val.mean(axis=0)) ** 2).sum())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kw", "min_fve", "max_l0"),
    [
        (dict(name="topk", kind="topk", k=16), 0.8, 16),
        (dict(name="batchtopk", kind="batchtopk", k=16), 0.8, 32),
        (dict(name="relu", kind="relu_l1", l1_coefficient=1e-2), 0.8, 192),
    ],
)
def test_saes_learn_held_out_pooled_vectors(
    acts: RealActivations, kw: dict[str, Any], min_fve: float, max_l0: float
) -> None:
    x = acts.pooled[3]
    baseline = _mean_baseline_fve(x)
    assert abs(baseline) < 0.1
    _, metrics = train_dictionary(_spec(**kw), x[:N_TRAIN], None, x[N_TRAIN:], None, progress=False)
    print(kw["name"], {k: metrics[k] for k in ("fve", "mse", "l0", "dead_fraction")})
    assert metrics["fve"] > min_fve > baseline + 0.5
    assert 0 < metrics["l0"] <= max_l0
    assert 0 <= metrics["dead_fraction"] < 1


@pytest.mark.slow
def test_protein_transcoder_predicts_the_layer_difference(acts: RealActivations) -> None:
    x, y = acts.pooled[3], acts.pooled[4] - acts.pooled[3]  # pooled(L+1) − pooled(L)
    spec = _spec(name="tc", kind="transcoder", out_layer=4, k=16)
    module, metrics = train_dictionary(
        spec, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], progress=False
    )
    assert isinstance(module, Transcoder)
    pred = module(torch.from_numpy(x[N_TRAIN:]))[0].detach()
    assert pred.shape == (60, 192)
    print("tc", {k: metrics[k] for k in ("fve", "l0", "dead_fraction", "dead_latents_at_end")})
    assert metrics["fve"] > 0.8 > 0.3 > _mean_baseline_fve(y)
    assert metrics["l0"] > 15  # no collapse: each protein uses (nearly) all k = 16 latents
    # the prediction is in the target's raw units: FVE recomputed by hand agrees
    target = torch.from_numpy(y[N_TRAIN:])
    by_hand = 1 - ((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    assert abs(float(by_hand) - metrics["fve"]) < 1e-4


@pytest.mark.slow
def test_residue_transcoder_maps_layer_to_next(acts: RealActivations) -> None:
    x, y = acts.residues[3], acts.residues[4]
    split = int(acts.offsets[48])  # held out by protein, not by residue
    spec = _spec(
        name="tc_res",
        kind="transcoder",
        level="residue",
        out_layer=4,
        k=16,
        steps=300,
        batch_size=256,
    )
    module, metrics = train_dictionary(
        spec, x[:split], y[:split], x[split:], y[split:], progress=False
    )
    assert module(torch.from_numpy(x[:3]))[0].shape == (3, 192)
    assert metrics["fve"] > 0.5


def test_resume_equals_uninterrupted(acts: RealActivations, tmp_path: Path) -> None:
    x = acts.pooled[3]
    spec = _spec(name="resume", kind="batchtopk", k=8, steps=90, eval_every=20, checkpoint_every=25)
    whole, whole_metrics = train_dictionary(
        spec, x[:N_TRAIN], None, x[N_TRAIN:], None, progress=False
    )

    class Crash(Exception):
        pass

    def crash_at_60(step: int) -> None:
        if step == 60:
            raise Crash

    with pytest.raises(Crash):
        train_dictionary(spec, x[:N_TRAIN], None, x[N_TRAIN:], None, checkpoint_dir=tmp_path,
                         on_step=crash_at_60, progress=False)  # fmt: skip
    resumed, resumed_metrics = train_dictionary(spec, x[:N_TRAIN], None, x[N_TRAIN:], None,
                                                checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    drop = ("vectors_per_s",)
    assert {k: v for k, v in whole_metrics.items() if k not in drop} == {
        k: v for k, v in resumed_metrics.items() if k not in drop
    }
    other = spec.model_copy(update={"lr": 1e-3})
    with pytest.raises(ValueError, match="another spec"):
        train_dictionary(
            other, x[:N_TRAIN], None, x[N_TRAIN:], None, checkpoint_dir=tmp_path, progress=False
        )


def test_neurons_are_the_raw_layer(acts: RealActivations) -> None:
    x = acts.pooled[3]
    module, metrics = train_dictionary(_spec(name="n", kind="neurons"), x, None, x, None)
    assert isinstance(module, NeuronBasis) and module.n_latents == 192
    assert metrics["fve"] is None
    assert metrics["l0"] == pytest.approx(float((x > 0).sum(axis=1).mean()))
    assert metrics == evaluate(module, torch.from_numpy(x), torch.from_numpy(x)) | {
        "steps": 0,
        "n_train": 0,
    }


def test_run_train_writes_folders_and_skips_finished(acts: RealActivations, tmp_path: Path) -> None:
    calls: list[str] = []

    def get_data(spec: SaeSpec) -> tuple[np.ndarray, None, np.ndarray, None]:
        calls.append(spec.name)
        x = acts.pooled[spec.layer]
        return x[:N_TRAIN], None, x[N_TRAIN:], None

    specs = [
        _spec(name="t", kind="topk", k=8, steps=40, eval_every=20),
        _spec(name="n", kind="neurons"),
    ]
    base = Provenance("esm2_t4_2M_sprot14mini", acts.model_sha256, 0, None, "protein", "layer_norm")
    first = run_train(tmp_path, specs, get_data, base, progress=False)
    folder = tmp_path / "saes" / "t"
    assert {p.name for p in folder.iterdir()} == {
        "sae.safetensors",
        "config.json",
        "metrics.json",
        "DONE",
        "DONE.inputs.json",  # what the stage driver recorded (trainer.stage_driver)
    }
    assert json.loads((folder / "metrics.json").read_text()) == first["t"]
    expect = Provenance(**{**base.__dict__, "layer": 3})
    assert load_dictionary(folder, expect=expect).n_latents == 768
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["k"] == 8 and len(config["provenance"]["training_data_hash"]) == 64
    assert load_dictionary(tmp_path / "saes" / "n").kind == "neurons"
    again = run_train(tmp_path, specs, get_data, base, progress=False)
    assert calls == ["t", "n"] and again == first


def test_transcoder_resume_and_output_units(acts: RealActivations, tmp_path: Path) -> None:
    """The target scale is recomputed on resume; the returned module predicts raw units."""
    x, y = acts.pooled[3], acts.pooled[4] - acts.pooled[3]
    spec = _spec(name="tc-resume", kind="transcoder", out_layer=4, k=8, steps=60, eval_every=20,
                 checkpoint_every=20)  # fmt: skip
    data = (x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])
    whole, whole_metrics = train_dictionary(spec, *data, progress=False)

    class Crash(Exception):
        pass

    def crash_at_30(step: int) -> None:
        if step == 30:
            raise Crash

    with pytest.raises(Crash):
        train_dictionary(spec, *data, checkpoint_dir=tmp_path, on_step=crash_at_30, progress=False)
    resumed, _ = train_dictionary(spec, *data, checkpoint_dir=tmp_path, progress=False)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    scale = whole_metrics["target_scale"]
    assert scale == pytest.approx(float(np.sqrt(((y[:N_TRAIN] - y[:N_TRAIN].mean(0)) ** 2).mean())))
    pred = whole(torch.from_numpy(x[N_TRAIN:]))[0].detach().numpy()
    mse = float(((pred - y[N_TRAIN:]) ** 2).mean())
    assert mse == pytest.approx(whole_metrics["mse"], rel=1e-4)


def test_float16_data_trains_like_its_float32_copy(acts: RealActivations) -> None:
    """Residue samples stay float16 in memory; each batch is cast, so nothing else changes."""
    x16 = acts.residues[3][:2000].astype(np.float16)
    spec = _spec(name="half", kind="topk", k=8, steps=40, eval_every=20, level="residue")
    half, half_metrics = train_dictionary(spec, x16, progress=False)
    full, full_metrics = train_dictionary(spec, x16.astype(np.float32), progress=False)
    for name, tensor in half.state_dict().items():
        assert torch.equal(tensor, full.state_dict()[name]), name
    drop = ("vectors_per_s",)
    assert {k: v for k, v in half_metrics.items() if k not in drop} == pytest.approx(
        {k: v for k, v in full_metrics.items() if k not in drop}, rel=1e-9
    )


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_run_train_on_a_device(acts: RealActivations, tmp_path: Path, device: str) -> None:
    """``cpu`` and ``auto`` both train; where ``auto`` is the CPU the weights are identical."""

    def get_data(spec: SaeSpec) -> tuple[np.ndarray, None, np.ndarray, None]:
        x = acts.pooled[spec.layer]
        return x[:N_TRAIN], None, x[N_TRAIN:], None

    spec = _spec(name="d", kind="batchtopk", k=8, steps=60, eval_every=20)
    base = Provenance("esm2_t4_2M_sprot14mini", acts.model_sha256, 3, None, "protein", "layer_norm")
    ref = run_train(tmp_path / "ref", [spec], get_data, base, progress=False, device="cpu")["d"]
    got = run_train(tmp_path / "dev", [spec], get_data, base, progress=False, device=device)["d"]
    a, b = (
        load_dictionary(tmp_path / "ref" / "saes" / "d"),
        load_dictionary(tmp_path / "dev" / "saes" / "d"),
    )
    if resolve_device(device).type == "cpu":
        for name, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[name]), name
        assert got["fve"] == ref["fve"]
    else:  # another device rounds differently: the same quality, not the same bits
        assert got["fve"] == pytest.approx(ref["fve"], abs=0.05)
