"""Turn pasted text (one sequence or a FASTA) into clean records, or a clear 4xx message.

Lowercase and whitespace (including digits-free line breaks inside FASTA bodies) are normalised;
anything else outside ESM's amino-acid alphabet is refused with the record, the character and its
1-based position. Sequences longer than the model's window are windowed by the embedder (and the
response says so); above ``max_sequence_length`` they are refused with the limit in the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.esm_window import MAX_RESIDUES

# ESM's alphabet: the 20 standard amino acids plus X (unknown), B/Z (ambiguous), U (Sec), O (Pyl).
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
_WHITESPACE = re.compile(r"\s+")


_AA = "ACDEFGHIKLMNPQRSTVWYXBZUOacdefghiklmnpqrstvwyxbzuo"
_SPACE = r"[ \t\r\n]"
_RESIDUES = rf"[{_AA}]({_SPACE}*[{_AA}])*({_SPACE}*\*)?"  # one terminal stop codon allowed
# A header runs to the end of its line: none of the characters ``str.splitlines`` breaks on.
_HEADER = r">[^\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]*\r?\n"
# What the API schema promises the server accepts: one bare sequence, or a FASTA text whose
# records each hold at least one residue; residues separated only by spaces, tabs and line breaks.
# Every text it matches parses (tests/test_encode_validation.py); texts it does not match are
# refused even where the parser alone would cope, so the schema and the server agree exactly.
SEQUENCE_TEXT_PATTERN = (
    rf"^(?:{_SPACE}*{_RESIDUES}{_SPACE}*"
    rf"|{_SPACE}*{_HEADER}{_SPACE}*{_RESIDUES}([ \t\r]*\n{_SPACE}*{_HEADER}{_SPACE}*{_RESIDUES})*{_SPACE}*)$"
)
_SEQUENCE_TEXT = re.compile(SEQUENCE_TEXT_PATTERN)


class EncodeInputError(ValueError):
    """Bad input; ``status`` is the HTTP status to answer with (400, 413 or 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SequenceRecord:
    """One cleaned sequence; ``windowed`` when it exceeds the model window and is embedded in parts."""

    id: str
    sequence: str
    windowed: bool

    @property
    def length(self) -> int:
        return len(self.sequence)


def _clean(raw: str, where: str) -> str:
    """Upper-case, strip whitespace and one terminal stop ``*``; refuse anything else."""
    seq = _WHITESPACE.sub("", raw).upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise EncodeInputError(f"{where}: empty sequence", 422)
    for pos, char in enumerate(seq, start=1):
        if char not in AMINO_ACIDS:
            shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
            raise EncodeInputError(
                f"{where}: invalid character {shown} at position {pos} "
                f"(allowed: the 20 amino acids and X, B, Z, U, O)",
                422,
            )
    return seq


def _split_fasta(text: str) -> list[tuple[str, str, int]]:
    """``(header, body, line number of the header)`` per record; text before the first ``>`` is an error."""
    records: list[tuple[str, list[str], int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(">"):
            records.append((stripped[1:].strip(), [], lineno))
        elif stripped:
            if not records:
                raise EncodeInputError(
                    f"line {lineno}: sequence text before the first FASTA header '>'", 422
                )
            records[-1][1].append(stripped)
    return [(header, "".join(body), lineno) for header, body, lineno in records]


def parse_sequences(
    text: str,
    *,
    max_length: int,
    max_records: int,
    window: int = MAX_RESIDUES,
) -> list[SequenceRecord]:
    """Parse one bare sequence or a FASTA with several records into cleaned records.

    Raises :class:`EncodeInputError` naming the record (number and header), character and position.
    """
    if not text or not text.strip():
        raise EncodeInputError("empty input: paste a protein sequence or a FASTA", 422)
    if any(line.lstrip().startswith(">") for line in text.splitlines()):
        raw = _split_fasta(text)
        if len(raw) > max_records:
            raise EncodeInputError(
                f"too many FASTA records: {len(raw)} (at most {max_records} per request)", 413
            )
        named = []
        for number, (header, body, lineno) in enumerate(raw, start=1):
            ident = header.split()[0] if header else f"record{number}"
            where = f"record {number} ({ident}, line {lineno})"
            named.append((ident, _clean(body, where), where))
    else:
        named = [("query", _clean(text, "sequence"), "sequence")]
    if not _SEQUENCE_TEXT.fullmatch(text):
        raise EncodeInputError(
            "not a sequence or FASTA text of the accepted form: residues separated only by "
            "spaces, tabs and line breaks (\\n or \\r\\n), each FASTA header on its own line",
            422,
        )
    records = []
    for ident, seq, where in named:
        if len(seq) > max_length:
            raise EncodeInputError(
                f"{where}: {len(seq)} residues is longer than the limit of {max_length} "
                f"(the model sees {window} residues at a time; longer sequences up to the limit "
                "are windowed)",
                413,
            )
        records.append(SequenceRecord(ident, seq, windowed=len(seq) > window))
    return records


def parse_sequence_list(
    sequences: list[str], *, max_length: int, max_records: int, window: int = MAX_RESIDUES
) -> list[SequenceRecord]:
    """Several bare sequences (the JSON API's ``sequences`` list); each may also be a FASTA."""
    if not sequences:
        raise EncodeInputError("empty input: 'sequences' holds no sequence", 422)
    if len(sequences) > max_records:
        raise EncodeInputError(
            f"too many sequences: {len(sequences)} (at most {max_records} per request)", 413
        )
    records: list[SequenceRecord] = []
    for number, text in enumerate(sequences, start=1):
        try:
            parsed = parse_sequences(
                text, max_length=max_length, max_records=max_records, window=window
            )
        except EncodeInputError as exc:
            raise EncodeInputError(f"sequences[{number - 1}]: {exc}", exc.status) from exc
        if len(parsed) == 1 and parsed[0].id == "query":
            parsed = [SequenceRecord(f"seq{number}", parsed[0].sequence, parsed[0].windowed)]
        records.extend(parsed)
    if len(records) > max_records:
        raise EncodeInputError(
            f"too many sequences: {len(records)} (at most {max_records} per request)", 413
        )
    return records
