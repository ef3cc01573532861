"""Variant effects: ESM2's masked-marginal score of each variant and the features it gains and loses.

Notation (HGVS-like, one-letter, 1-based): a substitution ``A123V`` (optionally ``p.A123V``), a
deletion ``del45_50`` or ``del45``; several edits of one variant are joined by ``:`` or ``;``
(``A123V:G130S``). A wild-type residue that does not match the sequence, a position outside it,
overlapping edits or an unreadable edit are refused naming the edit.

The score is fair-esm's masked marginal (``examples/variant-prediction``, ``masked-marginals``):
for each substituted position ``i``, mask ``i`` in the wild type and take
``log p(mut_i) − log p(wt_i)`` there; a variant's score is the sum over its substitutions.
Deletions have no masked-marginal score (``None``); their feature changes are still reported.
Every masked position of a request is scored in one batched forward pass (split by a token budget).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from scipy import sparse

from app.esm import LoadedModel, iter_token_batches
from app.intervene.forward import full_logits
from app.intervene.notation import EDIT_PATTERN, VARIANT_PATTERN

MAX_VARIANTS = 100
MAX_EDITS = 20
_SUBSTITUTION = re.compile(r"^(?:P\.)?([A-Z])(\d+)([A-Z])$")
_DELETION = re.compile(r"^(?:P\.)?DEL(\d+)(?:_(\d+))?$")
_SEPARATORS = re.compile(r"[:;]")
_VARIANT = re.compile(VARIANT_PATTERN)
_EDIT = re.compile(rf"^{EDIT_PATTERN}$")


class VariantError(ValueError):
    """A variant that cannot be read or does not fit the wild type (a 422 naming it)."""


@dataclass(frozen=True)
class Substitution:
    position: int  # 1-based
    wild_type: str
    mutant: str

    @property
    def span(self) -> tuple[int, int]:
        return self.position, self.position


@dataclass(frozen=True)
class Deletion:
    start: int  # 1-based, inclusive
    end: int

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


Edit = Substitution | Deletion


@dataclass(frozen=True)
class Variant:
    name: str
    edits: tuple[Edit, ...]

    @property
    def substitutions(self) -> list[Substitution]:
        return [e for e in self.edits if isinstance(e, Substitution)]


def _parse_edit(original: str, sequence: str, where: str) -> Edit:
    length = len(sequence)
    text = original.upper()
    found = _SUBSTITUTION.match(text)
    if found:
        wild_type, position, mutant = found.group(1), int(found.group(2)), found.group(3)
        if not 1 <= position <= length:
            raise VariantError(f"{where}: position {position} outside 1..{length}")
        if sequence[position - 1] != wild_type:
            raise VariantError(
                f"{where}: the wild type has {sequence[position - 1]} at {position}, "
                f"not {wild_type}"
            )
        if mutant == wild_type:
            raise VariantError(f"{where}: {mutant} is the wild-type residue (no change)")
        if mutant not in "ACDEFGHIKLMNPQRSTVWY":
            raise VariantError(f"{where}: {mutant} is not one of the 20 amino acids")
        return Substitution(position, wild_type, mutant)
    found = _DELETION.match(text)
    if found:
        start = int(found.group(1))
        end = int(found.group(2) or start)
        if not 1 <= start <= end <= length:
            raise VariantError(f"{where}: deletion {start}..{end} outside 1..{length}")
        if end - start + 1 >= length:
            raise VariantError(f"{where}: deletes the whole sequence")
        return Deletion(start, end)
    raise VariantError(
        f"{where}: cannot read {original!r} (expected e.g. A123V, p.A123V, del45_50 or del45)"
    )


def parse_variant(text: str, sequence: str) -> Variant:
    """One variant (edits joined by ``:`` or ``;``) checked against the wild type."""
    name = text.strip()
    parts = [p.strip() for p in _SEPARATORS.split(name) if p.strip()]
    if not parts:
        raise VariantError("an empty variant")
    if not _VARIANT.match(text):  # what the API schema states (app.intervene.notation)
        bad = next((p.strip() for p in _SEPARATORS.split(name) if not _EDIT.match(p.strip())), name)
        raise VariantError(
            f"{name}: cannot read {bad!r} (expected e.g. A123V, p.A123V, del45_50 or del45, "
            "several joined by ':' or ';')"
        )
    if len(parts) > MAX_EDITS:
        raise VariantError(f"{name}: at most {MAX_EDITS} edits per variant")
    edits = tuple(_parse_edit(p, sequence, f"{name}: {p}") for p in parts)
    spans = sorted(e.span for e in edits)
    for (_, end), (start, _) in pairwise(spans):
        if start <= end:
            raise VariantError(f"{name}: edits overlap at position {start}")
    return Variant(name, edits)


def parse_variants(texts: Sequence[str], sequence: str) -> list[Variant]:
    if not texts:
        raise VariantError("give at least one variant")
    if len(texts) > MAX_VARIANTS:
        raise VariantError(f"at most {MAX_VARIANTS} variants per request, got {len(texts)}")
    return [parse_variant(t, sequence) for t in texts]


def mutant_sequence(sequence: str, variant: Variant) -> tuple[str, np.ndarray]:
    """The mutant and, per mutant residue, its wild-type position (0-based)."""
    residues = list(sequence)
    origin = list(range(len(sequence)))
    for edit in sorted(variant.edits, key=lambda e: e.span, reverse=True):
        if isinstance(edit, Substitution):
            residues[edit.position - 1] = edit.mutant
        else:
            del residues[edit.start - 1 : edit.end]
            del origin[edit.start - 1 : edit.end]
    return "".join(residues), np.asarray(origin, dtype=np.int64)


def masked_log_probs(
    loaded: LoadedModel, sequence: str, positions: Sequence[int], max_tokens: int = 16384
) -> dict[int, np.ndarray]:
    """Per 1-based position: ESM2's log-probabilities over its vocabulary with that position masked
    in ``sequence`` (one row per position, batched by ``max_tokens``)."""
    unique = sorted(set(positions))
    if not unique:
        return {}
    copies = [sequence] * len(unique)
    out: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for batch, tokens in iter_token_batches(loaded, copies, max_tokens):
            for row, index in enumerate(batch):
                tokens[row, unique[index]] = loaded.alphabet.mask_idx  # BOS shifts by one
            logits = full_logits(loaded, tokens)
            log_p = torch.log_softmax(logits.float(), dim=-1)
            for row, index in enumerate(batch):
                out[unique[index]] = log_p[row, unique[index]].cpu().numpy()
    return out


def masked_marginal_score(
    loaded: LoadedModel, variant: Variant, log_probs: dict[int, np.ndarray]
) -> float | None:
    """Σ over substitutions of ``log p(mut) − log p(wt)`` at the masked position; ``None`` when
    the variant deletes residues."""
    if any(isinstance(e, Deletion) for e in variant.edits):
        return None
    idx = loaded.alphabet.get_idx
    return float(
        sum(
            log_probs[s.position][idx(s.mutant)] - log_probs[s.position][idx(s.wild_type)]
            for s in variant.substitutions
        )
    )


@dataclass
class FeatureChange:
    """One latent's change from wild type to mutant: pooled values (max over residues at residue
    level, the code at protein level) and the per-residue difference on wild-type positions
    (``nan`` where the mutant deleted the residue)."""

    index: int
    before: float
    after: float
    track: np.ndarray

    @property
    def delta(self) -> float:
        return self.after - self.before


def feature_changes(
    wt_residue: sparse.csr_matrix,
    wt_pooled: np.ndarray,
    mut_residue: sparse.csr_matrix,
    mut_pooled: np.ndarray,
    origin: np.ndarray,
    top: int,
) -> tuple[list[int], list[int], list[FeatureChange]]:
    """(latents gained, latents lost, the ``top`` latents by |pooled change| with their tracks)."""
    gained = np.flatnonzero((wt_pooled <= 0) & (mut_pooled > 0))
    lost = np.flatnonzero((wt_pooled > 0) & (mut_pooled <= 0))
    delta = mut_pooled - wt_pooled
    moved = np.flatnonzero(delta != 0)
    order = moved[np.argsort(-np.abs(delta[moved]), kind="stable")][:top]
    changes = []
    for index in order:
        wt_values = np.asarray(wt_residue[:, index].todense()).ravel()
        on_wt = np.full(wt_values.shape[0], np.nan, dtype=np.float64)
        on_wt[origin] = np.asarray(mut_residue[:, index].todense()).ravel()
        changes.append(
            FeatureChange(int(index), float(wt_pooled[index]), float(mut_pooled[index]),
                          on_wt - wt_values)
        )  # fmt: skip
    rank = np.argsort(-mut_pooled[gained], kind="stable")
    lost_rank = np.argsort(-wt_pooled[lost], kind="stable")
    return [int(i) for i in gained[rank]], [int(i) for i in lost[lost_rank]], changes
