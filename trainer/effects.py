"""What each feature makes the model predict, measured by intervention (not read off the weights).

For every live latent of an SAE, on each of its strongest example proteins (analyze's ``top``
bin, at most ``examples_per_feature``), the stream at the SAE's layer is edited twice through the
decoder, every other latent and the SAE's reconstruction error left as they are: once with the
latent at its *typical activation* (the median of its examples' activations), once with it at
zero. The rest of ESM2 runs on both, and ``Δ log p(aa) = with − without`` is read for the 20
amino acids:

- residue-level SAEs: at the example's peak residue, where the edit is made;
- protein-level SAEs (spliced as the loss-recovered metric and steering do): the pooled code's
  decoded change is added to every residue, and Δ log p is averaged over the protein's residues.

Kept per latent: the mean over its examples, the standard deviation, how many examples, and the
activation used. A latent with no example, a dead one, transcoders and the neuron baseline get
``NaN`` (not measured). Proteins longer than the model's window are cropped to the window around
the peak.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from app.atomic_write import write_atomic
from app.esm import LoadedModel, tokenize
from app.esm_window import MAX_RESIDUES
from app.intervene.forward import hidden_at, logits_from
from app.intervene.steer import AMINO_ACIDS, amino_acid_ids
from app.sae.models import SparseDictionary
from trainer.analysis_files import Effects, Examples
from trainer.layout import AnalysisFiles
from trainer.stage_driver import StageUnit, run_unit


class EffectsConfig(BaseModel):
    """``[effects]``: the per-feature intervention readout run after analyze."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    examples_per_feature: int = Field(default=3, ge=1, le=50)
    max_tokens_per_batch: int = Field(default=16384, ge=1024)


def window(length: int, peak: int, size: int = MAX_RESIDUES) -> tuple[int, int]:
    """``[start, end)`` of at most ``size`` residues around ``peak``."""
    if length <= size:
        return 0, length
    start = min(max(0, peak - size // 2), length - size)
    return start, start + size


def _typical(activation: np.ndarray) -> float:
    return float(np.median(activation))


def measure_effects(
    loaded: LoadedModel,
    module: SparseDictionary,
    layer: int,
    sequences: Sequence[str],
    examples: dict[str, np.ndarray],
    cfg: EffectsConfig,
    level: str = "residue",
) -> dict[str, np.ndarray]:
    """``mean``/``std`` ``[n_latents, 20]`` Δ log p, ``n_examples``, ``activation`` (see module doc).

    ``examples``: analyze's ``examples.npz`` (feature, protein, bin, rank, activation,
    max_position); ``sequences``: the corpus, by protein index.
    """
    n = module.n_latents
    top = examples["bin"] == "top"
    feature, protein = examples["feature"][top], examples["protein"][top]
    rank, peak_value = examples["rank"][top], examples["activation"][top]
    peak = examples["max_position"][top]
    keep = rank < cfg.examples_per_feature
    typical = np.full(n, np.nan, dtype=np.float32)
    by_protein: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for f in np.unique(feature[keep]):
        rows = np.flatnonzero(keep & (feature == f))
        typical[f] = _typical(peak_value[rows])
        for r in rows:
            by_protein[int(protein[r])].append((int(f), int(peak[r])))
    deltas: dict[int, list[np.ndarray]] = defaultdict(list)
    aa_ids = amino_acid_ids(loaded)
    device = next(module.parameters()).device
    with torch.inference_mode():
        for p, pairs in sorted(by_protein.items()):
            found = _protein_effects(
                loaded, module, layer, sequences[p], pairs, typical, aa_ids, cfg, device, level
            )
            for (f, _), delta in zip(pairs, found, strict=True):
                deltas[f].append(delta)
    mean = np.full((n, len(AMINO_ACIDS)), np.nan, dtype=np.float32)
    std = np.full((n, len(AMINO_ACIDS)), np.nan, dtype=np.float32)
    count = np.zeros(n, dtype=np.int64)
    for f, found in deltas.items():
        stacked = np.stack(found)
        count[f] = len(found)
        mean[f], std[f] = stacked.mean(0), stacked.std(0)
    return {"mean": mean, "std": std, "n_examples": count, "activation": typical}


def _protein_effects(
    loaded: LoadedModel,
    module: SparseDictionary,
    layer: int,
    sequence: str,
    pairs: list[tuple[int, int]],
    typical: np.ndarray,
    aa_ids: list[int],
    cfg: EffectsConfig,
    device: torch.device,
    level: str = "residue",
) -> list[np.ndarray]:
    """Δ log p ``[20]`` per (latent, peak) pair on one protein (one forward to the layer per
    window, then two edited rows per pair through the rest of the model)."""
    windows: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_, pos) in enumerate(pairs):
        windows[window(len(sequence), pos)].append(i)
    results: dict[int, np.ndarray] = {}
    for (start, end), members in windows.items():
        tokens = tokenize(loaded, [sequence[start:end]]).to(loaded.device)
        hidden = hidden_at(loaded, tokens, layer)
        x = hidden[0, 1 : end - start + 1].to(device=device, dtype=module.W_dec.dtype)
        protein_level = level == "protein"
        code_of = x.mean(dim=0, keepdim=True) if protein_level else x
        z = module.encode(code_of)
        _, stats = module.normalise(code_of)
        per_batch = max(1, cfg.max_tokens_per_batch // tokens.shape[1] // 2)
        for chunk in range(0, len(members), per_batch):
            ids = members[chunk : chunk + per_batch]
            rows = hidden.repeat(2 * len(ids), 1, 1)
            for k, i in enumerate(ids):
                f, pos = pairs[i]
                at = 0 if protein_level else pos - start  # the code's row
                span = slice(1, end - start + 1) if protein_level else slice(at + 1, at + 2)
                direction = module.W_dec[f] * stats.std[at]
                current = z[at, f]
                edited = x if protein_level else x[at : at + 1]
                with_f = edited + (float(typical[f]) - current) * direction
                without = edited - current * direction
                rows[2 * k, span] = with_f.to(rows.dtype)
                rows[2 * k + 1, span] = without.to(rows.dtype)
            logits = logits_from(loaded, rows, tokens.repeat(2 * len(ids), 1), layer)
            log_p = torch.log_softmax(logits.float(), dim=-1)[..., aa_ids]
            for k, i in enumerate(ids):
                if protein_level:  # the mean over the protein's residues
                    delta = (
                        log_p[2 * k, 1 : end - start + 1] - log_p[2 * k + 1, 1 : end - start + 1]
                    )
                    results[i] = delta.mean(dim=0).cpu().numpy()
                else:
                    pos = pairs[i][1] - start + 1
                    results[i] = (log_p[2 * k, pos] - log_p[2 * k + 1, pos]).cpu().numpy()
    return [results[i] for i in range(len(pairs))]


def measurable(module: object, level: str, cfg: EffectsConfig) -> TypeGuard[SparseDictionary]:
    """SAEs are measured, at either level; transcoders and neurons are not (module docstring)."""
    return (
        cfg.enabled
        and level in ("residue", "protein")
        and isinstance(module, SparseDictionary)
        and not module.is_transcoder
    )


def run_effects(
    analysis_dir: Path,
    loaded: LoadedModel,
    module: SparseDictionary,
    layer: int,
    sequences: Sequence[str],
    cfg: EffectsConfig,
    level: str = "residue",
) -> Path:
    """Write ``effects.npz`` beside the analysis (skipped when current for that analysis)."""
    files = AnalysisFiles(analysis_dir)
    # The analysis marker's whole text (its stamp and newline), as stamps were first made.
    inputs = {"analysis": files.done.read_text(), "effects": cfg.model_dump(), "level": level}
    unit = StageUnit(f"effects: {files.dir.name}", files.effects_done, inputs,
                     outputs=(files.effects,))  # fmt: skip

    def measure() -> None:
        examples = Examples.load(files.examples).arrays()
        arrays = measure_effects(loaded, module.eval(), layer, sequences, examples, cfg, level)
        read_at = np.array("protein mean" if level == "protein" else "peak residue")
        Effects(**arrays, amino_acids=np.array(list(AMINO_ACIDS)), read_at=read_at).save(
            files.effects
        )
        measured = int((arrays["n_examples"] > 0).sum())
        write_atomic(files.effects_summary, json.dumps({"features_measured": measured}))

    run_unit(unit, measure, load=lambda: None)
    return files.effects
