"""Every bad-input class gets a clear message naming what and where; good input is normalised."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.encoding.validation import (
    SEQUENCE_TEXT_PATTERN,
    EncodeInputError,
    parse_sequence_list,
    parse_sequences,
)
from tests.encode_fixtures import human_proteins

# Human haemoglobin alpha (P69905), as in Swiss-Prot.
HBA = (
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHK"
    "LRVDPVNFKLLSHCLLVTLAAHLPAEFTPAVHASLDKFLASVSTVLTSKYR"
)
LIMITS = {"max_length": 4096, "max_records": 16}


def test_bare_sequence_is_normalised() -> None:
    text = "  " + HBA[:40].lower() + "\n" + HBA[40:80] + " \t" + HBA[80:] + "*\n"
    (record,) = parse_sequences(text, **LIMITS)
    assert record.sequence == HBA and record.id == "query" and not record.windowed


def test_fasta_records_keep_their_ids() -> None:
    fasta = f">sp|P69905|HBA_HUMAN Hemoglobin alpha\n{HBA[:60]}\n{HBA[60:]}\n\n>second\nmkv\n"
    records = parse_sequences(fasta, **LIMITS)
    assert [r.id for r in records] == ["sp|P69905|HBA_HUMAN", "second"]
    assert records[0].sequence == HBA and records[1].sequence == "MKV"


@pytest.mark.parametrize("text", ["", "   \n\t", ">only a header\n"])
def test_empty_input(text: str) -> None:
    with pytest.raises(EncodeInputError, match="empty") as err:
        parse_sequences(text, **LIMITS)
    assert err.value.status == 422


def test_invalid_character_says_which_and_where() -> None:
    bad = HBA[:16] + "J" + HBA[17:]
    fasta = f">first\n{HBA}\n>sp|P69905\n{bad}\n"
    with pytest.raises(EncodeInputError) as err:
        parse_sequences(fasta, **LIMITS)
    message = str(err.value)
    assert "record 2 (sp|P69905" in message and "'J' at position 17" in message
    with pytest.raises(EncodeInputError, match="'1' at position 4"):
        parse_sequences("MKV1LL", **LIMITS)


def test_text_before_header_names_the_line() -> None:
    with pytest.raises(EncodeInputError, match="line 1"):
        parse_sequences("MKV\n>a\nMKV", **LIMITS)


def test_long_sequences_are_windowed_then_refused_above_the_limit() -> None:
    long = (HBA * 11)[:1500]
    (record,) = parse_sequences(long, **LIMITS)
    assert record.windowed and record.length == 1500
    with pytest.raises(EncodeInputError, match="limit of 1000") as err:
        parse_sequences(long, max_length=1000, max_records=16)
    assert err.value.status == 413


def test_too_many_records() -> None:
    fasta = "".join(f">r{i}\n{HBA}\n" for i in range(5))
    with pytest.raises(EncodeInputError, match="too many FASTA records: 5") as err:
        parse_sequences(fasta, max_length=4096, max_records=4)
    assert err.value.status == 413
    with pytest.raises(EncodeInputError, match="too many sequences"):
        parse_sequence_list([HBA] * 5, max_length=4096, max_records=4)


def test_sequence_list_names_the_item() -> None:
    records = parse_sequence_list([HBA, "mkv"], **LIMITS)
    assert [r.id for r in records] == ["seq1", "seq2"]
    with pytest.raises(EncodeInputError, match=r"sequences\[1\]: empty"):
        parse_sequence_list([HBA, " "], **LIMITS)


# --- The API schema's pattern (SEQUENCE_TEXT_PATTERN) and the parser agree --------------------


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.from_regex(SEQUENCE_TEXT_PATTERN, fullmatch=True))
def test_every_text_the_schema_pattern_admits_parses(text: str) -> None:
    """The schema promises these are accepted: the parser must not refuse one (sizes aside)."""
    records = parse_sequences(text, max_length=10**6, max_records=10**6)
    assert records and all(r.sequence for r in records)


def test_real_fasta_matches_the_pattern(shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 8)
    for newline in ("\n", "\r\n"):
        fasta = newline.join(
            f">sp|{r['accession']}|{r['protein_name']}{newline}"
            + newline.join(r["sequence"][i : i + 60] for i in range(0, len(r["sequence"]), 60))
            for r in rows
        )
        assert re.fullmatch(SEQUENCE_TEXT_PATTERN, fasta)
        records = parse_sequences(fasta, **LIMITS)
        assert [r.sequence for r in records] == [r["sequence"] for r in rows]


@pytest.mark.parametrize(
    "text", ["MK\u00a0V", "MKV\u2028>a\nMKV", ">a\u2028b\nMKV", "MK\x1cV", ">a\rMKV"]
)
def test_texts_outside_the_pattern_are_refused(text: str) -> None:
    """Exotic separators the parser alone would take are refused, as the schema says."""
    assert not re.fullmatch(SEQUENCE_TEXT_PATTERN, text)
    with pytest.raises(EncodeInputError) as err:
        parse_sequences(text, **LIMITS)
    assert err.value.status == 422
