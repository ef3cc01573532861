"""Completion stamps: canonical digests, atomic markers, and what a marker from before stamps means."""

from __future__ import annotations

from pathlib import Path

from trainer.stamps import digest, is_current, read_stamp, redo_reason, write_stamp


def test_digest_is_canonical_and_sensitive() -> None:
    a = {"spec": {"k": 16, "layer": 3}, "model": "d4f0"}
    assert digest(a) == digest({"model": "d4f0", "spec": {"layer": 3, "k": 16}})
    assert digest(a) != digest({"spec": {"k": 32, "layer": 3}, "model": "d4f0"})
    assert len(digest(a)) == 20


def test_markers(tmp_path: Path) -> None:
    done = tmp_path / "DONE"
    assert read_stamp(done) is None and not is_current(done, "x")
    done.write_text("ok\n")  # as written before stamps
    assert not is_current(done, digest({})) and "before stamps" in redo_reason(done)
    write_stamp(done, "abc")
    assert is_current(done, "abc") and not (tmp_path / "DONE.tmp").exists()
    assert redo_reason(done) == "its inputs changed since it was made"
    done.write_text("")
    assert read_stamp(done) is None
