"""One settings object for the server, the CLI and the trainer (env prefix ``PROTSAE_``).

Built once where a process starts (the CLI, ``app.main``) and passed down: the web app keeps
its own on ``app.state`` (``app.main.create_app``), so tests build apps with their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob a deployment may turn; read from ``PROTSAE_*`` environment variables or ``.env``."""

    model_config = SettingsConfigDict(env_prefix="PROTSAE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=PROJECT_ROOT / "data",
        description="Writable directory for the SQLite store, caches, embeddings and SAE weights.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to an SQLite file inside data_dir.",
    )
    shared_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared",
        description="Read-only folder with the real data and the mini ESM2 model.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    torch_threads: int = Field(default=2, ge=1)
    device: str = Field(default="auto", description="auto | cpu | cuda")
    # Limits on what one request may ask of the server.
    max_sequence_length: int = Field(default=4096, ge=1)
    max_fasta_records: int = Field(default=16, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    encode_queue_size: int = Field(default=64, ge=1)
    encode_max_batch: int = Field(default=16, ge=1)
    encode_max_wait_ms: float = Field(default=5.0, ge=0)
    encode_cache_size: int = Field(default=512, ge=0)
    intervene_max_concurrent: int = Field(default=2, ge=1)  # steering/variant requests at once
    request_threads: int = Field(
        default=2,
        ge=1,
        description="Threads per worker running synchronous routes at once. Pages are CPU-bound "
        "Python sharing one interpreter lock: at 16 concurrent requests the heaviest feature page "
        "cost 19 ms of CPU with 1 thread, 23 ms with 2, 29 ms with 4 and 32 ms with Starlette's "
        "default 40; 2 lets one request wait on the store while another computes.",
    )
    # Serving: worker processes, and each worker's cache of rendered pages and API bodies.
    workers: int | None = Field(default=None, ge=1, description="Default: the number of cores.")
    cache: bool = Field(default=True, description="Keep rendered responses of published runs.")
    cache_max_mb: float = Field(default=128.0, ge=0, description="Per worker, bodies as stored.")
    cache_max_age: int = Field(default=60, ge=0, description="Seconds browsers reuse a response.")

    @field_validator("workers", mode="before")
    @classmethod
    def _unset_workers(cls, value: object) -> object:
        """An empty PROTSAE_WORKERS (docker-compose passing an unset variable) means the default."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def sqlalchemy_url(self) -> str:
        """The configured URL, or the default SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'protsae.sqlite').resolve()}"

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir
