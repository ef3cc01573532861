"""The trainer's config file (TOML): every parameter of a run, validated, recorded with the run.

Strings may use ``{shared}`` (the read-only data folder, ``PROTSAE_SHARED_DIR``) and ``{data}``
(the writable data folder, ``PROTSAE_DATA_DIR``), so one config works on any machine.

``[run]`` owns what every stage shares: the device, the torch threads and the seed. The stage
sections still carry the resolved ``seed``/``device`` a stage reads (and its stamps record), but
they are filled from ``[run]`` (:func:`resolve_run_wide`); old files that set them per section
load through ``trainer.config_legacy`` with a warning naming the new key.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from app.settings import Settings
from trainer.analyze import AnalyzeConfig
from trainer.concepts.stage import ConceptsConfig
from trainer.config_legacy import upgrade_legacy
from trainer.domains.stage import DomainConfig
from trainer.effects import EffectsConfig
from trainer.embed import EmbedConfig
from trainer.engines import EngineName, RayConfig
from trainer.explain.stage import ExplainConfig
from trainer.go.stage import GoConfig
from trainer.go.worklist_stage import WorklistConfig
from trainer.ingest import IngestConfig
from trainer.train import SaeSpec


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the field."""


Stage = Literal["ingest", "saes", "loss", "analyze", "go", "concepts", "explain", "random_init"]

# A stage's seed is the run seed plus its offset here. The offsets are the stages' former
# defaults (each stage had its own seed field), so a run of seed 0 draws what it drew before.
SEED_OFFSETS: dict[Stage, int] = {
    "ingest": 0, "saes": 0, "loss": 0, "analyze": 0, "go": 0, "concepts": 0,
    "explain": 42, "random_init": 12345,
}  # fmt: skip


class RunSection(BaseModel):
    """Run-wide settings: the name, and the device, seed and threads every stage shares."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    description: str = ""
    seed: int = Field(default=0, description="the run seed; each stage's derives from it")
    seeds: dict[Stage, int] = Field(
        default_factory=dict,
        description="a stage's own seed, where it must differ from what stage_seed derives",
    )
    device: str = Field(
        default="auto",
        description="embed, train and analyze: auto (CUDA when available), cpu or cuda[:n]",
    )
    torch_threads: int | None = Field(default=None, ge=1)
    engine: EngineName = Field(
        default="local",
        description="where embed, analyze and GO run: 'local' (this process and forked "
        "workers; no Ray) or 'ray' (a Ray cluster, see [ray] and docs/scale.md)",
    )


def stage_seed(run: RunSection, stage: Stage) -> int:
    """The one rule for a stage's seed: ``[run.seeds]`` names it, else run seed + its offset."""
    return run.seeds.get(stage, run.seed + SEED_OFFSETS[stage])


class ControlsSection(BaseModel):
    """Null controls: the same SAEs trained on a randomly initialised copy of the model."""

    random_init: bool = True
    random_init_seed: int = Field(
        default=12345, description="set from [run] (stage_seed 'random_init'), not in the TOML"
    )
    dictionaries: list[str] = Field(
        default_factory=list, description="names of SAEs to repeat on the random model"
    )


class NeuronsSection(BaseModel):
    """The baseline: the raw neurons of these layers, analysed like any dictionary."""

    layers: list[int] = Field(default_factory=list)
    levels: list[Literal["protein", "residue"]] | None = Field(
        default=None,
        description="levels of each layer's baseline; default: those of the layer's SAEs "
        "(protein when it has none)",
    )


class LossSection(BaseModel):
    """Held-out proteins for masked-LM loss recovered."""

    n_proteins: int = Field(default=64, ge=1)
    max_length: int = Field(default=512, ge=8)
    seed: int = Field(default=0, description="set from [run] (stage_seed 'loss'), not in the TOML")


# Each section's key that [run] fills in, and the stage whose seed goes there.
RUN_SEEDED: dict[str, tuple[str, Stage]] = {
    "ingest": ("seed", "ingest"), "loss": ("seed", "loss"), "analyze": ("seed", "analyze"),
    "go": ("seed", "go"), "concepts": ("seed", "concepts"), "explain": ("seed", "explain"),
    "controls": ("random_init_seed", "random_init"),
}  # fmt: skip
RUN_DEVICE_SECTIONS = ("embed", "analyze")
# Sections that exist when the file leaves them out (the others are required or off).
_DEFAULTED = {"loss", "analyze", "explain", "controls"}


def resolve_run_wide(data: dict[str, Any]) -> dict[str, Any]:
    """The raw config with ``[run]``'s device and each stage's seed (:func:`stage_seed`) written
    into the sections that read them, where unset (a dumped config keeps what it recorded)."""
    try:
        run = RunSection.model_validate(data.get("run"))
    except ValidationError:
        return data  # the config's own validation reports it
    out = dict(data)

    def fill(section: str, key: str, value: object) -> None:
        current = out.get(section, {} if section in _DEFAULTED else None)
        if isinstance(current, dict):
            out[section] = {key: value, **current}

    for section, (key, stage) in RUN_SEEDED.items():
        fill(section, key, stage_seed(run, stage))
    for section in RUN_DEVICE_SECTIONS:
        fill(section, "device", run.device)
    if isinstance(out.get("saes"), list):
        # A dictionary may keep its own seed (several seeds of one recipe in one run).
        out["saes"] = [{"seed": stage_seed(run, "saes"), **spec} if isinstance(spec, dict)
                       else spec for spec in out["saes"]]  # fmt: skip
    return out


class TrainerConfig(BaseModel):
    run: RunSection
    ingest: IngestConfig
    embed: EmbedConfig
    saes: list[SaeSpec] = Field(default_factory=list)
    neurons: NeuronsSection = Field(default_factory=NeuronsSection)
    controls: ControlsSection = Field(default_factory=ControlsSection)
    loss: LossSection = Field(default_factory=LossSection)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    effects: EffectsConfig = Field(default_factory=EffectsConfig)
    go: GoConfig
    # Missing-annotation worklists checked against a later GO snapshot; None: not run.
    worklist: WorklistConfig | None = None
    # Pfam / PROSITE enrichment of the human proteins, run with the GO stage; None = off.
    domains: DomainConfig | None = None
    explain: ExplainConfig = Field(default_factory=lambda: ExplainConfig())
    concepts: ConceptsConfig | None = None
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _run_wide(cls, data: Any) -> Any:
        """Hand ``[run]``'s device and derived seeds to the sections that use them."""
        return resolve_run_wide(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _residue_layers_cover(self) -> TrainerConfig:
        """An explicit ``embed.residue_layers`` must keep every layer a dictionary reads per residue."""
        if self.embed.residue_layers is None:
            return self
        for spec in self.saes:
            missing = sorted(set(spec.residue_layers()) - set(self.embed.residue_layers))
            if missing:
                raise ValueError(
                    f"embed.residue_layers {self.embed.residue_layers} lacks layer(s) {missing}, "
                    f"which the residue-level dictionary {spec.name!r} reads per residue"
                )
        return self

    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in mapping.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (values, arrays such as [[saes]]) is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One TOML file, with ``extends = "other.toml"`` (relative to it) merged underneath."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        where = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: no such config file{where}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a file name, got {parent!r}")
    base_path = (path.parent / parent).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: extends {parent!r} makes a cycle")
    return _merge(_read_toml(base_path, (*seen, path.resolve())), raw)


def load_config(path: Path, settings: Settings) -> TrainerConfig:
    """Read and validate a TOML config; errors name the file and the offending field.

    A config may start from another (``extends = "demo.toml"``) and override some of its
    tables, so a variant run states only what differs.
    """
    raw = _read_toml(path)
    try:
        raw = upgrade_legacy(raw, f"{path} (or a file it extends)")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    mapping = {"shared": str(settings.shared_dir), "data": str(settings.data_dir)}
    try:
        return TrainerConfig.model_validate(_substitute(raw, mapping))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
