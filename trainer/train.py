"""Stage 3 (train) and 4 (neurons): fit sparse dictionaries to activations, plainly.

``train_dictionary`` is a nanoGPT-style loop: Adam on random batches drawn by a seeded generator,
decoder kept unit-norm, held-out evaluation every ``eval_every`` steps keeping the best-val-MSE
weights, and a checkpoint (weights, optimiser, generator, dead-latent counters, best state) every
``checkpoint_every`` steps, so an interrupted run resumes to exactly the uninterrupted result.
``run_train`` drives it over many specs into ``{workdir}/saes/{name}/``, one stage-driver unit per
dictionary (``trainer.stage_driver``: DONE written last); the checkpoint resumption stays here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, model_validator
from torch import Tensor
from tqdm import tqdm

from app.atomic_write import atomic_path, write_atomic
from app.esm import resolve_device
from app.sae import (
    BatchTopKSAE,
    Dictionary,
    NeuronBasis,
    Provenance,
    ReluL1SAE,
    SparseDictionary,
    TopKSAE,
    Transcoder,
    save_dictionary,
)
from app.sae.models import BatchTopK
from trainer.layout import RunLayout, SaeFiles
from trainer.stage_driver import StageUnit, run_unit
from trainer.stamps import read_stamp, write_stamp

Array = Tensor | np.ndarray
Data = tuple[Array, Array | None, Array | None, Array | None]  # x_train, y_train, x_val, y_val
CHECKPOINT = "checkpoint.pt"


class SaeSpec(BaseModel):
    """Every parameter of one dictionary's training (recorded in its config.json)."""

    name: str
    kind: Literal["topk", "batchtopk", "relu_l1", "transcoder", "neurons"]
    level: Literal["protein", "residue"]
    layer: int
    out_layer: int | None = None  # transcoders: the target layer (L+1)
    n_latents: int | None = None
    expansion: float | None = 8.0  # n_latents = expansion × d_in when n_latents is None
    k: int | None = None  # topk / batchtopk (seed paper: 64 protein level, 16 residue level)
    l1_coefficient: float = 0.0  # relu_l1
    encoder_kind: Literal["topk", "batchtopk", "relu_l1"] = "topk"  # transcoders
    normalisation: Literal["layer_norm", "none"] = "layer_norm"
    lr: float = 4e-4
    batch_size: int = 128
    steps: int = 2000
    dead_threshold: int = 200  # batches without firing before a latent counts as dead (AuxK)
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 100
    checkpoint_every: int = 200

    @model_validator(mode="after")
    def _consistent(self) -> SaeSpec:
        sparse = self.encoder_kind if self.kind == "transcoder" else self.kind
        if sparse in ("topk", "batchtopk") and not self.k:
            raise ValueError(f"{self.name}: {sparse} needs k")
        if sparse == "relu_l1" and self.l1_coefficient <= 0:
            raise ValueError(f"{self.name}: relu_l1 needs l1_coefficient > 0")
        if self.kind == "transcoder" and self.out_layer is None:
            raise ValueError(f"{self.name}: a transcoder needs out_layer")
        if self.n_latents is None and self.expansion is None:
            raise ValueError(f"{self.name}: give n_latents or expansion")
        return self

    def residue_layers(self) -> list[int]:
        """Layers it reads per residue (input and target); protein level reads pooled vectors."""
        if self.level == "protein":
            return []
        return [self.layer] + ([self.out_layer] if self.out_layer is not None else [])

    def latents_for(self, d_in: int) -> int:
        return self.n_latents or round((self.expansion or 1.0) * d_in)


def build_module(spec: SaeSpec, d_in: int, d_out: int) -> Dictionary:
    """The untrained dictionary a spec describes."""
    n, norm = spec.latents_for(d_in), spec.normalisation
    if spec.kind == "neurons":
        return NeuronBasis(d_in)
    if spec.kind == "topk":
        return TopKSAE(d_in, n, spec.k or 0, normalisation=norm)
    if spec.kind == "batchtopk":
        return BatchTopKSAE(d_in, n, spec.k or 0, normalisation=norm)
    if spec.kind == "relu_l1":
        return ReluL1SAE(d_in, n, spec.l1_coefficient, normalisation=norm)
    l1 = spec.l1_coefficient if spec.encoder_kind == "relu_l1" else 0.0
    return Transcoder(
        d_in,
        n,
        d_out,
        encoder_kind=spec.encoder_kind,
        k=spec.k,
        l1_coefficient=l1,
        normalisation=norm,
    )


@torch.no_grad()
def evaluate(
    module: Dictionary, x: Tensor, y: Tensor, chunk: int = 4096, output_scale: float = 1.0
) -> dict[str, Any]:
    """Held-out metrics: FVE (1 − SSE/SST about the target's mean), MSE, L0, dead fraction.

    ``output_scale`` multiplies the module's output first (a transcoder while it trains on its
    target divided by that scale), so the MSE is always in the target's own units.
    """
    module.eval()
    sse = torch.zeros((), dtype=torch.float64, device=x.device)
    l0_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    fired = torch.zeros(module.n_latents, dtype=torch.bool, device=x.device)
    for start in range(0, x.shape[0], chunk):
        recon, z = module(x[start : start + chunk].float())
        recon = recon.double() * output_scale
        sse += (recon - y[start : start + chunk].double()).pow(2).sum()
        active = z > 0
        fired |= active.any(dim=0)
        l0_sum += active.sum()
    n = x.shape[0]
    metrics: dict[str, Any] = {
        "l0": float(l0_sum) / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "n_eval": n,
    }
    if isinstance(module, NeuronBasis):  # not a reconstruction: no FVE/MSE (see NeuronBasis)
        return metrics | {"fve": None, "mse": None}
    sst = _sst(y)
    return metrics | {"fve": 1.0 - float(sse) / max(sst, 1e-12), "mse": float(sse) / y.numel()}


def _sst(y: Tensor, chunk: int = 65536) -> float:
    """Sum of squares about the column means, in float64, a chunk at a time (y may be huge)."""
    mean = torch.zeros(y.shape[1], dtype=torch.float64, device=y.device)
    for s in range(0, y.shape[0], chunk):
        mean += y[s : s + chunk].double().sum(dim=0)
    mean /= max(y.shape[0], 1)
    total = torch.zeros((), dtype=torch.float64, device=y.device)
    for s in range(0, y.shape[0], chunk):
        total += (y[s : s + chunk].double() - mean).pow(2).sum()
    return float(total)


def _tensor(a: Array) -> Tensor:
    """float32, or float16 kept as is (residue samples: half the memory, cast per batch)."""
    t = torch.as_tensor(a)
    return t if t.dtype in (torch.float16, torch.float32) else t.float()


def _split(spec: SaeSpec, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded held-out split when the caller gives no validation set."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(spec.seed + 1))
    n_val = max(1, round(spec.val_fraction * x.shape[0]))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def _prepare(spec: SaeSpec, data: Data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_train, y_train, x_val, y_val = data
    if spec.kind == "transcoder" and y_train is None:
        raise ValueError(f"{spec.name}: a transcoder needs targets (y_train)")
    x = _tensor(x_train)
    y = _tensor(y_train) if y_train is not None else x
    if x_val is None:
        return _split(spec, x, y)
    xv = _tensor(x_val)
    return x, y, xv, _tensor(y_val) if y_val is not None else xv


def train_dictionary(
    spec: SaeSpec,
    x_train: Array,
    y_train: Array | None = None,
    x_val: Array | None = None,
    y_val: Array | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[Dictionary, dict[str, Any]]:
    """Train one dictionary on ``x_train [N, d_in]`` (targets ``y_train [N, d_out]`` for transcoders).

    Returns the best-validation-MSE module (eval mode) and its held-out metrics. With
    ``checkpoint_dir`` it resumes from the last checkpoint there. ``on_step(step)`` runs after each
    step (progress hooks; raising from it interrupts training like a crash would). ``device``:
    where to train, ``auto`` = CUDA when available (the data moves there once; batches are drawn
    on the CPU generator, so the draw is device-independent); the module comes back on the CPU.

    A transcoder trains standardised on both sides: its encoder sees LN(x) minus its data mean,
    divided by its RMS spread (pooled LN'd vectors are one common direction plus deviations ~15×
    smaller, so without this each latent fires for all proteins or none, and most die), and its
    target is divided by the target's RMS spread (unit-norm decoder rows, latents of order 1).
    Both are folded into the weights at the end, so the returned module is a plain transcoder
    that predicts the target in its own units.
    """
    dev = resolve_device(device)
    x, y, xv, yv = (_to_device(t, dev) for t in _prepare(spec, (x_train, y_train, x_val, y_val)))
    torch.manual_seed(spec.seed)  # the initialisation, on the CPU whatever the device
    module = build_module(spec, x.shape[1], y.shape[1]).to(dev)
    if not isinstance(module, SparseDictionary):  # the neuron baseline has nothing to train
        return module.cpu(), evaluate(module, xv, yv) | {"steps": 0, "n_train": 0}
    scale = target_scale(y) if module.is_transcoder else 1.0
    if module.is_transcoder:
        module.standardise_input(*_input_standardisation(module, x))
    _init_decoder_bias(module, x, y, scale)
    optimiser = torch.optim.Adam(module.parameters(), lr=spec.lr, eps=6.25e-10)  # OpenAI's eps
    state = _TrainState(torch.Generator().manual_seed(spec.seed), module.n_latents, dev)
    path = checkpoint_dir / CHECKPOINT if checkpoint_dir is not None else None
    if path is not None and path.exists():
        state.restore(path, spec, module, optimiser)
    threshold_start = min(1000, spec.steps // 5)  # BatchTopK: EMA once the latents settle
    started, start_step = time.perf_counter(), state.step
    bar = tqdm(range(state.step, spec.steps), initial=state.step, total=spec.steps,
               desc=spec.name, disable=not progress)  # fmt: skip
    for step in bar:
        idx = torch.randint(x.shape[0], (spec.batch_size,), generator=state.generator).to(dev)
        module.train()
        dead = state.since_fired >= spec.dead_threshold
        target = y[idx].float() / scale if module.is_transcoder else y[idx].float()
        loss, _, z = module.training_loss(x[idx].float(), target, dead)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        module.constrain_gradients()
        optimiser.step()
        module.constrain_weights()
        state.since_fired += 1
        state.since_fired.masked_fill_((z > 0).any(dim=0), 0)  # no host sync, unlike a[mask] = 0
        if isinstance(module.activation, BatchTopK) and step >= threshold_start:
            module.activation.update_threshold(z.detach())
        state.step = step + 1
        if state.step % spec.eval_every == 0 or state.step == spec.steps:
            val = evaluate(module, xv, yv, output_scale=scale)
            state.consider(val, module)
            bar.set_postfix(
                loss=f"{float(loss.detach()):.4f}", fve=f"{val['fve']:.3f}", l0=f"{val['l0']:.1f}"
            )
        if path is not None and state.step % spec.checkpoint_every == 0:
            state.save(path, spec, module, optimiser)
        if on_step is not None:
            on_step(state.step)
    seconds = time.perf_counter() - started
    module.load_state_dict(state.best_state or module.state_dict())
    if module.is_transcoder:
        module.fold_standardisation_(scale)
    metrics = evaluate(module, xv, yv)
    train_fit = evaluate(module, x[:4096], y[:4096])
    metrics |= {
        "train_fve": train_fit["fve"],
        "best_step": state.best_step,
        "steps": spec.steps,
        "n_train": x.shape[0],
        "dead_latents_at_end": int((state.since_fired >= spec.dead_threshold).sum()),
        "vectors_per_s": (state.step - start_step) * spec.batch_size / max(seconds, 1e-9),
    }
    if module.is_transcoder:
        metrics["target_scale"] = scale
    if isinstance(module.activation, BatchTopK):
        metrics["threshold"] = float(module.activation.threshold)
    return module.cpu().eval(), metrics


def _to_device(t: Tensor, dev: torch.device) -> Tensor:
    """Onto the training device once; via pinned memory on CUDA so the copy runs at full speed."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


SAMPLE = 65536  # rows that estimate the data mean and the target scale


@torch.no_grad()
def target_scale(y: Tensor) -> float:
    """RMS spread of the target about its mean (over samples and dimensions), 1 if constant.

    Dividing a transcoder's target by it gives the target per-dimension variance ~1, like the
    LayerNorm'd input, whatever the layer difference's raw size.
    """
    sample = y[:SAMPLE].double()
    spread = float((sample - sample.mean(dim=0)).pow(2).mean().sqrt())
    return spread if spread > 0 else 1.0


@torch.no_grad()
def _input_standardisation(module: SparseDictionary, x: Tensor) -> tuple[Tensor, float]:
    """Mean and RMS spread of LN(x) over the data: what a transcoder's encoder subtracts and
    divides by while it trains (SAEs get the same centring from their pre-bias)."""
    x_n = module.normalise(x[:SAMPLE].float())[0].double()
    mean = x_n.mean(dim=0)
    spread = float((x_n - mean).pow(2).mean().sqrt())
    return mean.float(), spread if spread > 0 else 1.0


@torch.no_grad()
def _init_decoder_bias(module: SparseDictionary, x: Tensor, y: Tensor, scale: float) -> None:
    """Start b_dec at the data mean (of LN(x) for SAEs, of the scaled target for transcoders), so
    the latents first model deviations from the mean rather than the mean itself (OpenAI)."""
    if module.pre_bias:
        module.b_dec.copy_(module.normalise(x[:SAMPLE].float())[0].mean(dim=0))
    else:
        module.b_dec.copy_(y[:SAMPLE].double().mean(dim=0) / scale)


class _TrainState:
    """What, besides the module and optimiser, a resumed run needs to continue identically."""

    def __init__(self, generator: torch.Generator, n_latents: int, device: torch.device) -> None:
        self.generator = generator
        self.device = device
        self.step = 0
        self.since_fired = torch.zeros(n_latents, dtype=torch.long, device=device)
        self.best_mse = float("inf")
        self.best_step = 0
        self.best_state: dict[str, Tensor] | None = None

    def consider(self, val: dict[str, Any], module: SparseDictionary) -> None:
        if val["mse"] < self.best_mse:
            self.best_mse, self.best_step = val["mse"], self.step
            self.best_state = copy.deepcopy(module.state_dict())

    def save(
        self, path: Path, spec: SaeSpec, module: SparseDictionary, opt: torch.optim.Optimizer
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "spec": spec.model_dump(),
            "step": self.step,
            "model": module.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": self.generator.get_state(),
            "since_fired": self.since_fired,
            "best_mse": self.best_mse,
            "best_step": self.best_step,
            "best_state": self.best_state,
        }
        with atomic_path(path) as tmp:  # a crash mid-write leaves the previous checkpoint intact
            torch.save(blob, tmp)

    def restore(
        self, path: Path, spec: SaeSpec, module: SparseDictionary, opt: torch.optim.Optimizer
    ) -> None:
        blob = torch.load(path, weights_only=True, map_location=self.device)
        if blob["spec"] != spec.model_dump():
            raise ValueError(f"{path}: checkpoint was made with another spec; delete it to restart")
        module.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        self.generator.set_state(blob["generator"].cpu())
        self.step, self.since_fired = blob["step"], blob["since_fired"]
        self.best_mse, self.best_step = blob["best_mse"], blob["best_step"]
        self.best_state = blob["best_state"]


def data_hash(*arrays: Array | None) -> str:
    """sha256 over the training arrays' shapes and float32 bytes (the provenance's data hash)."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        t = _tensor(a)
        digest.update(str(tuple(t.shape)).encode())
        for start in range(0, t.shape[0], 1 << 18):  # float32 bytes, a chunk at a time
            chunk = t[start : start + (1 << 18)].float().contiguous().numpy()
            digest.update(chunk.tobytes())
    return digest.hexdigest()


def run_train(
    workdir: Path,
    specs: list[SaeSpec],
    get_data: Callable[[SaeSpec], Data],
    provenance_base: Provenance,
    *,
    extra_metrics: Callable[[SaeSpec, Dictionary], dict[str, Any]] | None = None,
    progress: bool = True,
    device: str = "auto",
    inputs: Callable[[SaeSpec], Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every spec into ``{workdir}/saes/{name}/`` (weights, config, metrics, DONE last).

    Finished dictionaries are skipped; an unfinished one resumes from its checkpoint.
    ``extra_metrics(spec, module)`` adds e.g. loss recovered (``trainer.lm_loss``) before DONE.
    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:n]``.
    ``inputs(spec)``: everything the dictionary depends on (spec included); its digest is the
    stamp (``trainer.stamps``). With it, a dictionary counts as finished only when its DONE
    holds that stamp (the stage driver decides and says why it trains again), and a directory
    made from other inputs (weights, or a checkpoint to resume) is discarded before training.
    Without it DONE holds "ok" and any finished dictionary is kept.
    """
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        files = RunLayout(workdir).sae(spec.name)
        unit = StageUnit(
            f"train: {spec.name}",
            files.done,
            dict(inputs(spec)) if inputs is not None else {"spec": spec.model_dump(mode="json")},
            outputs=(files.weights, files.config, files.metrics),
            fixed_stamp=None if inputs is not None else "ok",
        )
        train = partial(_train_one, files, spec, get_data, provenance_base,
                        extra_metrics=extra_metrics, progress=progress, device=device,
                        stamp=unit.stamp if inputs is not None else None)  # fmt: skip
        results[spec.name] = run_unit(unit, train, load=partial(_read_metrics, files))
        shutil.rmtree(files.checkpoint, ignore_errors=True)
    return results


def _read_metrics(files: SaeFiles) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads(files.metrics.read_text())
    return metrics


def _train_one(
    files: SaeFiles,
    spec: SaeSpec,
    get_data: Callable[[SaeSpec], Data],
    provenance_base: Provenance,
    *,
    extra_metrics: Callable[[SaeSpec, Dictionary], dict[str, Any]] | None,
    progress: bool,
    device: str,
    stamp: str | None,
) -> dict[str, Any]:
    """Train (or resume) one dictionary and save it, everything but its DONE.

    With ``stamp``, the folder is the unit's only when its INPUTS file holds that stamp: a
    checkpoint made from other inputs is discarded, one from these inputs resumes.
    """
    out = files.dir
    if stamp is not None:
        if out.exists() and read_stamp(files.inputs) != stamp:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_stamp(files.inputs, stamp)
    data = get_data(spec)
    module, metrics = train_dictionary(
        spec, *data, checkpoint_dir=files.checkpoint, progress=progress, device=device
    )
    provenance = dataclasses.replace(
        provenance_base,
        layer=spec.layer,
        out_layer=spec.out_layer,
        level=spec.level,
        normalisation=module.normalisation,
        training_data_hash=data_hash(data[0], data[1]),
    )
    if extra_metrics is not None:
        metrics |= extra_metrics(spec, module)
    save_dictionary(module, out, provenance, config=spec.model_dump())
    write_atomic(files.metrics, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
