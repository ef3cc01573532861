"""Completion stamps: canonical digests, atomic markers, and what a marker from before stamps means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.atomic_write import atomic_file, write_atomic
from trainer.stage_driver import StageUnit, run_unit
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
    assert is_current(done, "abc") and not list(tmp_path.glob("*tmp"))
    assert redo_reason(done) == "its inputs changed since it was made"
    done.write_text("")
    assert read_stamp(done) is None


def test_an_interrupted_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "arrays.npz"
    with atomic_file(target) as handle:
        np.savez_compressed(handle, x=np.arange(3))
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        np.savez_compressed(handle, x=np.arange(5))
        raise RuntimeError("killed mid-write")
    with np.load(target) as saved:  # the name is kept: no ".npz" appended to a temporary
        np.testing.assert_array_equal(saved["x"], np.arange(3))
    write_atomic(tmp_path / "sub" / "summary.json", "{}")
    assert sorted(p.name for p in target.parent.iterdir()) == ["arrays.npz", "summary.json"]


def test_the_driver_skips_redoes_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "analysis" / "d"
    runs: list[int] = []

    def unit(**inputs: object) -> StageUnit:
        return StageUnit("analyze: d", out / "DONE", inputs, outputs=(out / "result.txt",))

    def compute() -> str:
        runs.append(1)
        write_atomic(out / "result.txt", str(len(runs)))
        return "computed"

    def load() -> str:
        return (out / "result.txt").read_text()

    first = unit(k=8, corpus="c1")
    assert first.redo_reason() == "not done yet"
    assert run_unit(first, compute, load=load, clear=out) == "computed"
    assert read_stamp(out / "DONE") == first.stamp == digest({"k": 8, "corpus": "c1"})
    assert run_unit(unit(k=8, corpus="c1"), compute, load=load, clear=out) == "1"  # skipped
    assert capsys.readouterr().out == ""

    (out / "stale.npz").write_bytes(b"from other inputs")
    changed = unit(k=16, corpus="c1")
    assert changed.redo_reason() == "its inputs changed since it was made (k)"
    assert run_unit(changed, compute, load=load, clear=out) == "computed"
    assert "analyze: d: its inputs changed since it was made (k): doing it again" in (
        capsys.readouterr().out
    )
    assert not (out / "stale.npz").exists() and len(runs) == 2

    (out / "result.txt").unlink()  # done, but an output is gone: made again
    assert changed.redo_reason() == "output missing: result.txt"
    run_unit(changed, compute, load=load)
    (out / "DONE").write_text("ok\n")  # a marker from before stamps
    assert "before stamps" in (changed.redo_reason() or "")
