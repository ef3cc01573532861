"""Config keys that moved to ``[run]``: still read, each with a warning that names its new key.

The device once sat in ``[embed]``, ``[analyze]`` and ``[train]``, and every stage had its own
seed; ``[run]`` now owns the device and the seeds (``trainer.config.stage_seed``). An old file
keeps working, so a user's runs keep their numbers, and learns what to write instead.
"""

from __future__ import annotations

import warnings
from typing import Any

# (section, key) of an old seed -> the stage it now overrides under [run.seeds].
MOVED_SEEDS: dict[tuple[str, str], str] = {
    ("ingest", "seed"): "ingest", ("loss", "seed"): "loss", ("analyze", "seed"): "analyze",
    ("go", "seed"): "go", ("concepts", "seed"): "concepts", ("explain", "seed"): "explain",
    ("controls", "random_init_seed"): "random_init",
}  # fmt: skip
MOVED_DEVICES: tuple[str, ...] = ("embed", "analyze", "train")


class ConfigDeprecation(UserWarning):
    """A config key that still works but has moved; the message names the new key."""


def _pop(raw: dict[str, Any], section: str, key: str) -> tuple[bool, Any]:
    table = raw.get(section)
    if isinstance(table, dict) and key in table:
        table = dict(table)
        value = table.pop(key)
        raw[section] = table
        return True, value
    return False, None


def _move_seeds(raw: dict[str, Any], run: dict[str, Any], where: str) -> None:
    for (section, key), stage in MOVED_SEEDS.items():
        found, value = _pop(raw, section, key)
        if not found:
            continue
        seeds = dict(run.get("seeds") or {})
        if stage in seeds and seeds[stage] != value:
            raise ValueError(
                f"[{section}] {key} = {value!r} contradicts [run.seeds] {stage} = {seeds[stage]!r};"
                f" keep only [run.seeds] {stage}"
            )
        seeds[stage] = value
        run["seeds"] = seeds
        warnings.warn(
            f"{where}: [{section}] {key} is deprecated: write {stage} = {value!r} under [run.seeds], or drop"
            f" it where [run] seed derives the same value (trainer.config.stage_seed)",
            ConfigDeprecation,
            stacklevel=3,
        )


def _move_device(raw: dict[str, Any], run: dict[str, Any], where: str) -> None:
    found = {}
    for section in MOVED_DEVICES:
        present, value = _pop(raw, section, "device")
        if present:
            found[f"[{section}] device"] = value
    if not found:
        return
    named = dict(found)
    if "device" in run:
        named["[run] device"] = run["device"]
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{key} = {value!r}" for key, value in named.items())
        raise ValueError(f"one device serves every stage, set as [run] device; got {listed}")
    run["device"] = next(iter(found.values()))
    warnings.warn(
        f"{where}: {', '.join(found)} is deprecated: write device = {run['device']!r} under [run]",
        ConfigDeprecation,
        stacklevel=3,
    )


def upgrade_legacy(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The raw config with moved keys written under ``[run]``, warning once per key (the
    warning starts with ``where``, the config file).

    Raises ``ValueError`` (naming the keys) where old and new places disagree, or where the
    removed ``[train]`` table still holds a setting."""
    out = dict(raw)
    run = dict(out.get("run") or {}) if isinstance(out.get("run"), dict) else None
    if run is None:
        return out  # no [run] table: the config's own validation says so
    _move_seeds(out, run, where)
    _move_device(out, run, where)
    if "train" in out:
        leftover = out.pop("train")
        if leftover:
            raise ValueError(f"[train] is gone (its device is [run] device); remove {leftover!r}")
    out["run"] = run
    return out
