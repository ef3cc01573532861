"""The explain and score prompts, their tools (structured output) and strict reply parsing.

The shared instructions live in a system block marked for prompt caching; the per-feature user
message holds only protein metadata. Explain prompts show normalised activations (and, for
residue-level features, where the feature fires); score prompts hide them. Replies come back as
the forced tool's JSON input and are validated here; anything off is :class:`MalformedReply`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

EXPLAIN_TOOL_NAME = "record_explanation"
SCORE_TOOL_NAME = "record_predictions"
MAX_EXPLANATION_CHARS = 800

EXPLAIN_SYSTEM = """\
You interpret features of a sparse dictionary (a sparse autoencoder, a transcoder, or raw neurons)
learned on the internal activations of ESM2, a protein language model. Each feature assigns every
protein an activation; activations have been divided by the feature's maximum over a corpus of
proteins, so they lie between 0 (the feature does not fire) and 1 (its strongest protein).

You will see proteins on which the feature fires at different strengths and proteins on which it
does not fire at all (activation 0). For each protein you get its UniProt accession, name, gene,
organism, Gene Ontology annotations (biological process, molecular function, cellular component;
term name with its GO id), Pfam families and EC numbers where known, and its activation. For
features computed per residue you may also see the residues where the feature fires most, each
with a short sequence window around it.

Something in this metadata explains when the feature fires. Your task: find the property that best
separates strongly activating proteins from weakly activating and inactive ones, and state it in
ONE sentence that another reader could use to predict the activation of new proteins from their
metadata alone. Prefer specific, checkable wording (name the GO terms, families, enzyme classes,
subcellular locations or sequence motifs involved) over vague summaries; do not quote activation
values. Reply only by calling the record_explanation tool."""

SCORE_SYSTEM = """\
You predict the activation of one feature of a sparse dictionary learned on the internal
activations of ESM2, a protein language model, from a one-sentence explanation of what the feature
responds to. Activations lie between 0 (the feature does not fire) and 1 (its strongest protein);
many proteins have activation exactly 0.

You will get the explanation and the metadata of several proteins (UniProt accession, name, gene,
organism, Gene Ontology annotations with names and ids, Pfam families and EC numbers where known).
For EVERY listed protein, predict its activation as a number between 0 and 1, using only the
explanation and the metadata. Return exactly one prediction per protein, identified by its
accession, by calling the record_predictions tool."""

EXPLAIN_TOOL: dict[str, Any] = {
    "name": EXPLAIN_TOOL_NAME,
    "description": "Record the one-sentence explanation of the feature.",
    "input_schema": {
        "type": "object",
        "properties": {
            "explanation": {
                "type": "string",
                "description": "One sentence: the metadata property that drives the feature.",
            }
        },
        "required": ["explanation"],
    },
}

SCORE_TOOL: dict[str, Any] = {
    "name": SCORE_TOOL_NAME,
    "description": "Record one predicted activation in [0, 1] for every listed protein.",
    "input_schema": {
        "type": "object",
        "properties": {
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The protein's accession."},
                        "activation": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "required": ["id", "activation"],
                },
            }
        },
        "required": ["predictions"],
    },
}


class CorpusLike(Protocol):
    """What the prompts read from ``trainer.corpus.Corpus`` (parallel lists in corpus order)."""

    @property
    def accessions(self) -> Sequence[str]: ...
    @property
    def sequences(self) -> Sequence[str]: ...
    @property
    def names(self) -> Sequence[str | None]: ...
    @property
    def genes(self) -> Sequence[str | None]: ...
    @property
    def organisms(self) -> Sequence[str | None]: ...
    @property
    def go_bp(self) -> Sequence[set[str]]: ...
    @property
    def go_mf(self) -> Sequence[set[str]]: ...
    @property
    def go_cc(self) -> Sequence[set[str]]: ...
    @property
    def pfam(self) -> Sequence[Any]: ...
    @property
    def ec(self) -> Sequence[Any]: ...


class MalformedReply(ValueError):
    """A reply that does not match the tool's contract (retried, then recorded as a failure)."""


def _items(value: Any) -> list[str]:
    """Pfam/EC may arrive as a set, a list or a ';'-separated string; normalise to sorted ids."""
    if value is None:
        return []
    if isinstance(value, str):
        parts: Iterable[str] = value.replace("|", ";").split(";")
    else:
        parts = value
    return sorted({p.strip() for p in parts if p and p.strip()})


def _go_line(label: str, ids: set[str], names: Mapping[str, str], cap: int) -> str | None:
    if not ids:
        return None
    # Named terms first (alphabetically), then ids the ontology no longer names.
    terms = sorted(ids, key=lambda g: (g not in names, names.get(g, g).lower(), g))
    shown = [f"{names[g]} ({g})" if g in names else g for g in terms[:cap]]
    more = f"; (+{len(terms) - cap} more)" if len(terms) > cap else ""
    return f"{label}: " + "; ".join(shown) + more


def protein_block(
    corpus: CorpusLike,
    row: int,
    go_names: Mapping[str, str],
    *,
    activation: float | None = None,
    sites: Sequence[str] = (),
    max_go_terms: int = 15,
) -> str:
    """One protein's metadata as prompt lines (activation and sites only when given)."""
    lines = [f"### {corpus.accessions[row]}"]
    if activation is not None:
        lines.append(f"activation: {activation:.2f}")
    for label, value in (
        ("name", corpus.names[row]),
        ("gene", corpus.genes[row]),
        ("organism", corpus.organisms[row]),
    ):
        if value:
            lines.append(f"{label}: {value}")
    for label, ids in (
        ("GO biological process", corpus.go_bp[row]),
        ("GO molecular function", corpus.go_mf[row]),
        ("GO cellular component", corpus.go_cc[row]),
    ):
        line = _go_line(label, set(ids), go_names, max_go_terms)
        if line:
            lines.append(line)
    for label, value in (("Pfam", corpus.pfam[row]), ("EC", corpus.ec[row])):
        items = _items(value)
        if items:
            lines.append(f"{label}: " + "; ".join(items))
    if sites:
        lines.append("fires most at: " + "; ".join(sites))
    return "\n".join(lines)


def residue_sites(
    sequence: str, values: Sequence[float], top: int = 3, half_window: int = 5
) -> list[str]:
    """The residues where a residue-level feature fires most, e.g. ``C42 in ...GKCHT... (0.91)``.

    ``values`` are the feature's per-residue activations divided by the feature's corpus maximum.
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = []
    for i in order[:top]:
        if values[i] <= 0:
            break
        lo, hi = max(0, i - half_window), min(len(sequence), i + half_window + 1)
        window = sequence[lo:i] + sequence[i].lower() + sequence[i + 1 : hi]
        out.append(f"{sequence[i]}{i + 1} in {window} ({values[i]:.2f})")
    return out


def explain_prompt(
    feature: int, blocks_active: Sequence[str], blocks_inactive: Sequence[str]
) -> str:
    """The per-feature user message of the explain request."""
    return (
        f"Feature {feature}.\n\nProteins on which the feature fires "
        f"({len(blocks_active)}, strongest first):\n\n"
        + "\n\n".join(blocks_active)
        + f"\n\nProteins on which the feature does not fire ({len(blocks_inactive)}, "
        "activation 0):\n\n"
        + "\n\n".join(blocks_inactive)
        + "\n\nIn one sentence: what property of these proteins makes the feature fire?"
    )


def score_prompt(explanation: str, blocks: Sequence[str]) -> str:
    """The per-feature user message of the score request (activations hidden)."""
    return (
        f"Explanation of the feature:\n{explanation}\n\n"
        f"Predict the feature's activation (0 to 1) for each of these {len(blocks)} proteins:\n\n"
        + "\n\n".join(blocks)
    )


def parse_explanation(reply: Mapping[str, Any]) -> str:
    """The explanation text from the tool input; empty, non-text or overlong is malformed."""
    text = reply.get("explanation")
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("explanation missing or empty")
    text = " ".join(text.split())
    if len(text) > MAX_EXPLANATION_CHARS:
        raise MalformedReply(f"explanation longer than {MAX_EXPLANATION_CHARS} characters")
    return text


def parse_predictions(reply: Mapping[str, Any], ids: Sequence[str]) -> list[float]:
    """Predictions in the order of ``ids``; each id exactly once, each value a number in [0, 1]."""
    items = reply.get("predictions")
    if not isinstance(items, list):
        raise MalformedReply("predictions missing or not a list")
    got: dict[str, float] = {}
    for item in items:
        if not isinstance(item, dict):
            raise MalformedReply("a prediction is not an object")
        pid, value = item.get("id"), item.get("activation")
        if not isinstance(pid, str) or pid not in ids:
            raise MalformedReply(f"prediction for an unknown protein {pid!r}")
        if pid in got:
            raise MalformedReply(f"two predictions for {pid}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedReply(f"prediction for {pid} is not a number: {value!r}")
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise MalformedReply(f"prediction for {pid} outside [0, 1]: {value!r}")
        got[pid] = float(value)
    missing = [i for i in ids if i not in got]
    if missing:
        raise MalformedReply(f"{len(missing)} proteins without a prediction, e.g. {missing[0]}")
    return [got[i] for i in ids]
