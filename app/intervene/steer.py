"""Feature steering: clamp, scale or ablate SAE features on a sequence, and read the new predictions.

The stream at the SAE's layer is edited by the *change* in the SAE's decoded output,
``h' = h + decode(z') − decode(z)``, which equals ``decode(z') + (h − decode(z))``: the
reconstruction of the steered code with the SAE's reconstruction error added back. An
intervention that leaves the code as it is (``z' = z``) therefore leaves the stream, and the
logits, bit for bit as the unsteered model's.

Residue-level SAEs are steered position by position. A protein-level SAE encodes the mean of the
residues; its steered code changes the decoded mean by ``Δ``, and ``Δ`` is added to every chosen
residue (all residues by default), which moves the protein's mean by exactly ``Δ``.

The model is read from one unmasked forward, as InterProt does: the log-probabilities of the 20
amino acids at every position, before and after. On request, masked marginals at chosen positions
(that position replaced by ``<mask>``, the steering applied to the masked input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from app.esm import LoadedModel, check_sequences, tokenize
from app.esm_window import MAX_RESIDUES
from app.intervene.forward import hidden_at, logits_from
from app.sae.models import SparseDictionary

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
Mode = Literal["clamp", "scale", "ablate"]
MAX_INTERVENTIONS = 32
VALUE_LIMIT = 1e4


class SteerError(ValueError):
    """Input that cannot be steered (a 422 naming what is wrong)."""


@dataclass(frozen=True)
class Intervention:
    """Set feature ``feature`` at ``positions`` (0-based; ``None`` = every residue).

    ``clamp``: to ``value``; ``scale``: multiply by ``value``; ``ablate``: to zero."""

    feature: int
    mode: Mode
    value: float | None = None
    positions: tuple[int, ...] | None = None


@dataclass
class SteerResult:
    """What one steered sequence looks like to the model.

    ``log_p_*``: ``[L, 20]`` natural-log probabilities of :data:`AMINO_ACIDS` under ESM2's full
    vocabulary (as fair-esm scores variants). ``feature_before/after``: ``[L, n_interventions]``
    activations of each intervened feature (residue level), or ``[1, n]`` pooled (protein level),
    after = the SAE re-encoding the edited stream. ``masked``: position -> (before, after) ``[20]``.
    """

    level: str
    log_p_before: np.ndarray
    log_p_after: np.ndarray
    feature_before: np.ndarray
    feature_after: np.ndarray
    masked: dict[int, tuple[np.ndarray, np.ndarray]]


def steerable(module: object) -> SparseDictionary:
    """The module as an SAE, or a :class:`SteerError` saying why it cannot be steered."""
    if not isinstance(module, SparseDictionary):
        raise SteerError(
            "raw neurons have no decoder to steer through: choose an SAE of the same layer"
        )
    if module.is_transcoder:
        raise SteerError(
            "steering edits a layer through an SAE's decoder; a transcoder predicts the next "
            "layer instead: choose an SAE"
        )
    return module


def check_interventions(interventions: Sequence[Intervention], n_latents: int, length: int) -> None:
    """Refuse interventions that name no real feature, position or value (message per item)."""
    if not interventions:
        raise SteerError("give at least one intervention")
    if len(interventions) > MAX_INTERVENTIONS:
        raise SteerError(f"at most {MAX_INTERVENTIONS} interventions, got {len(interventions)}")
    for i, item in enumerate(interventions):
        where = f"interventions[{i}]"
        if not 0 <= item.feature < n_latents:
            raise SteerError(f"{where}: feature {item.feature} outside 0..{n_latents - 1}")
        if item.mode in ("clamp", "scale"):
            if item.value is None or not math.isfinite(item.value):
                raise SteerError(f"{where}: {item.mode} needs a finite value")
            if abs(item.value) > VALUE_LIMIT:
                raise SteerError(f"{where}: |value| must be at most {VALUE_LIMIT:g}")
        if item.positions is not None:
            if not item.positions:
                raise SteerError(f"{where}: positions is empty")
            bad = [p + 1 for p in item.positions if not 0 <= p < length]
            if bad:
                raise SteerError(
                    f"{where}: positions {bad[:5]} outside 1..{length} (the sequence length)"
                )


def _edit_codes(z: Tensor, item: Intervention, rows: slice | list[int]) -> Tensor:
    """A copy of the codes ``[N, n]`` with ``item`` applied at ``rows``."""
    out = z.clone()
    column = out[rows, item.feature]
    if item.mode == "clamp":
        column = torch.full_like(column, float(item.value or 0.0))
    elif item.mode == "scale":
        column = column * float(item.value or 0.0)
    else:
        column = torch.zeros_like(column)
    out[rows, item.feature] = column
    return out


def _decoded_change(module: SparseDictionary, dz: Tensor, std: Tensor) -> Tensor:
    """``decode(z + dz) − decode(z)`` exactly: the decoder is linear, the bias and mean cancel."""
    change = dz @ module.W_dec
    return change * std if module.normalisation == "layer_norm" else change


def edit_stream(
    module: SparseDictionary, level: str, x: Tensor, interventions: Sequence[Intervention]
) -> tuple[Tensor, Tensor, Tensor]:
    """``x [L, d]`` (one sequence's residues at the SAE's layer) -> (edited stream, intervened
    features before ``[L|1, n_int]``, after re-encoding the edited stream)."""
    features = [item.feature for item in interventions]
    dtype = module.W_dec.dtype
    x = x.to(dtype)
    if level == "residue":
        z = module.encode(x)
        _, stats = module.normalise(x)
        steered = z
        for item in interventions:
            rows = slice(None) if item.positions is None else list(item.positions)
            steered = _edit_codes(steered, item, rows)
        edited = x + _decoded_change(module, steered - z, stats.std)
        return edited, z[:, features], module.encode(edited)[:, features]
    mean = x.mean(dim=0, keepdim=True)
    z = module.encode(mean)
    _, stats = module.normalise(mean)
    edited = x.clone()
    for item in interventions:
        change = _decoded_change(module, _edit_codes(z, item, slice(None)) - z, stats.std)
        rows = slice(None) if item.positions is None else list(item.positions)
        edited[rows] += change[0]
    after = module.encode(edited.mean(dim=0, keepdim=True))
    return edited, z[:, features], after[:, features]


def amino_acid_ids(loaded: LoadedModel) -> list[int]:
    return [loaded.alphabet.get_idx(a) for a in AMINO_ACIDS]


def _log_p(loaded: LoadedModel, logits: Tensor) -> np.ndarray:
    """``[..., vocab]`` logits -> ``[..., 20]`` log-probabilities of the amino acids."""
    full = torch.log_softmax(logits.float(), dim=-1)
    return full[..., amino_acid_ids(loaded)].cpu().numpy()


def _steered_logits(
    loaded: LoadedModel,
    module: SparseDictionary,
    level: str,
    layer: int,
    tokens: Tensor,
    interventions: Sequence[Intervention],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Logits before and after ``[B, T, vocab]`` for rows of one sequence (``tokens [B, T]``),
    and the intervened features before/after of the first row."""
    length = tokens.shape[1] - 2
    hidden = hidden_at(loaded, tokens, layer)
    edited = hidden.clone()
    firsts: tuple[Tensor, Tensor] | None = None
    for row in range(tokens.shape[0]):
        residues = hidden[row, 1 : length + 1]
        new, before, after = edit_stream(module, level, residues, interventions)
        edited[row, 1 : length + 1] = new.to(hidden.dtype)
        firsts = firsts or (before, after)
    both = logits_from(loaded, torch.cat([hidden, edited]), torch.cat([tokens, tokens]), layer)
    assert firsts is not None
    return both[: tokens.shape[0]], both[tokens.shape[0] :], firsts[0], firsts[1]


def steer(
    loaded: LoadedModel,
    module: object,
    level: str,
    layer: int,
    sequence: str,
    interventions: Sequence[Intervention],
    masked_positions: Sequence[int] = (),
) -> SteerResult:
    """Run ``sequence`` through ESM2 with ``interventions`` applied at ``layer`` (see module doc)."""
    sae = steerable(module)
    check_sequences([sequence])
    if len(sequence) > MAX_RESIDUES:
        raise SteerError(
            f"steering runs one forward pass: at most {MAX_RESIDUES} residues, got {len(sequence)}"
        )
    check_interventions(interventions, sae.n_latents, len(sequence))
    bad = [p + 1 for p in masked_positions if not 0 <= p < len(sequence)]
    if bad:
        raise SteerError(f"masked_positions {bad[:5]} outside 1..{len(sequence)}")
    tokens = tokenize(loaded, [sequence]).to(loaded.device)
    with torch.inference_mode():
        before, after, feat_before, feat_after = _steered_logits(
            loaded, sae, level, layer, tokens, interventions
        )
        masked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if masked_positions:
            positions = sorted(set(masked_positions))
            rows = tokens.repeat(len(positions), 1)
            for row, position in enumerate(positions):
                rows[row, position + 1] = loaded.alphabet.mask_idx
            m_before, m_after, _, _ = _steered_logits(
                loaded, sae, level, layer, rows, interventions
            )
            for row, position in enumerate(positions):
                masked[position] = (
                    _log_p(loaded, m_before[row, position + 1]),
                    _log_p(loaded, m_after[row, position + 1]),
                )
    span = slice(1, len(sequence) + 1)
    return SteerResult(
        level=level,
        log_p_before=_log_p(loaded, before[0, span]),
        log_p_after=_log_p(loaded, after[0, span]),
        feature_before=feat_before.float().cpu().numpy(),
        feature_after=feat_after.float().cpu().numpy(),
        masked=masked,
    )
