"""The stage driver: a unit of work declares what it depends on, the driver decides whether to
redo it, says why, and marks it done.

Every stage goes through it: ingest (the corpus), train, analyze, effects, GO, domains,
worklist, concepts and explain, one ``StageUnit`` per marker, and embed through ``needs_run``
alone (below). A unit is its DONE marker, the inputs its stamp digests (settings, upstream
stamps) and the outputs it must leave. ``run_unit`` skips it when the marker holds the stamp of
these inputs and every output exists; otherwise it logs the reason (which inputs changed, which
output is missing), clears the unit's folder when asked (no stale file survives a redo),
computes, and writes the marker last, atomically. The inputs are recorded beside the marker
(``DONE.inputs.json``) so the next run can name what changed.

Two stages kept the stamps they had before the driver, so no finished work is redone: ingest's
marker holds its config hash and an unstamped training's holds "ok"; such a unit gives that
value as ``fixed_stamp`` (its inputs are then recorded for the "why" message alone). Explain
accepts its older "ok" markers by stamping them when first seen (as concepts does).

Finer resumption inside a unit (embed shards, train checkpoints, GO feature ranges) stays with
the stage; it writes through the same atomic helper (``app.atomic_write``) and the same stamps.
Embed's marker is its manifest (``done`` per shard and overall): it hands ``needs_run`` any
object with a ``label`` and a ``redo_reason()`` (``Redoable``), so its decision and its "why"
are logged like every other stage's.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

from app.atomic_write import write_atomic
from trainer.stamps import digest, read_stamp, write_stamp

log = logging.getLogger(__name__)
T = TypeVar("T")


def inputs_record(done: Path) -> Path:
    """Where the inputs a marker's stamp was made from are kept (for "why is this redone")."""
    return done.with_name(done.name + ".inputs.json")


class Redoable(Protocol):
    """What ``needs_run`` asks of a unit: its name in the log and why it must be (re)done."""

    @property
    def label(self) -> str: ...

    def redo_reason(self) -> str | None: ...


@dataclass(frozen=True)
class StageUnit:
    """One resumable unit of a stage.

    ``label``: how the log names it ("analyze: L3-residue-topk"). ``done``: its marker.
    ``inputs``: everything its output depends on (JSON data; upstream stamps included): the
    stamp is their digest. ``outputs``: files that must exist for it to count as done.
    ``fixed_stamp``: the stamp, when the stage's markers predate the driver and hold another
    recipe's value (ingest's config hash, an unstamped training's "ok"); it replaces the digest.
    """

    label: str
    done: Path
    inputs: Mapping[str, Any]
    outputs: Sequence[Path] = field(default_factory=tuple)
    fixed_stamp: str | None = None

    @cached_property
    def stamp(self) -> str:
        return self.fixed_stamp if self.fixed_stamp is not None else digest(dict(self.inputs))

    def redo_reason(self) -> str | None:
        """Why the unit must be (re)done; None when it is current."""
        found = read_stamp(self.done)
        if found is None:
            return "not done yet"
        if found == "ok" != self.stamp:
            return "finished before stamps existed, so its inputs are unknown"
        if found != self.stamp:
            return f"its inputs changed since it was made ({self._changed()})"
        missing = [p.name for p in self.outputs if not p.exists()]
        if missing:
            return f"output missing: {', '.join(missing)}"
        return None

    def _changed(self) -> str:
        """Which inputs differ from those recorded with the marker (when it recorded them)."""
        try:
            before = json.loads(inputs_record(self.done).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return "not recorded which"
        now = json.loads(json.dumps(dict(self.inputs), sort_keys=True, default=str))
        keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        return ", ".join(keys) or "same inputs, other stamp recipe"

    def mark_done(self) -> None:
        """Record the inputs, then the marker (last: it is what says the unit is finished)."""
        text = json.dumps(dict(self.inputs), sort_keys=True, default=str, indent=1)
        write_atomic(inputs_record(self.done), text)
        write_stamp(self.done, self.stamp)


def needs_run(unit: Redoable, *, announce: bool = True) -> bool:
    """Whether ``unit`` must be (re)done; says why when it had been done before."""
    reason = unit.redo_reason()
    if reason is None:
        return False
    if announce and reason != "not done yet":
        print(f"{unit.label}: {reason}: doing it again")
    log.info("%s: %s", unit.label, reason)
    return True


def run_unit(
    unit: StageUnit,
    compute: Callable[[], T],
    *,
    load: Callable[[], T],
    clear: Path | None = None,
    announce: bool = True,
) -> T:
    """``load()`` when ``unit`` is current; otherwise log why, remove ``clear`` (the unit's own
    folder) when given, run ``compute()`` and mark the unit done. Returns what either gave."""
    if not needs_run(unit, announce=announce):
        return load()
    if clear is not None and clear.exists():
        shutil.rmtree(clear)
    unit.done.unlink(missing_ok=True)
    result = compute()
    unit.mark_done()
    return result
