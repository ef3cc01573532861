"""Token usage, its price, and the budget that stops a run before it overspends.

Prices are Anthropic's public list prices in USD per million tokens (input, output). Cache writes
cost 1.25× input, cache reads 0.1× input, and the Message Batches API halves everything. A model
missing from the table needs explicit prices in the config (never a silent guess).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
}
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
BATCH_FACTOR = 0.5


class BudgetExceeded(RuntimeError):
    """The configured budget is spent; finished work is cached, so a re-run resumes."""


def model_prices(model: str, override: tuple[float, float] | None = None) -> tuple[float, float]:
    """(input, output) USD per million tokens for ``model`` (longest table prefix wins)."""
    if override is not None:
        return override
    matches = [k for k in PRICES_PER_MTOK if model.startswith(k)]
    if not matches:
        raise ValueError(
            f"no list price known for model {model!r}: set price_input_per_mtok and "
            "price_output_per_mtok in the explain config"
        )
    return PRICES_PER_MTOK[max(matches, key=len)]


@dataclass
class Usage:
    """Token counts as the Messages API reports them (``usage``), summed over requests."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0
    batch_requests: int = 0

    @classmethod
    def from_api(cls, usage: object, *, batch: bool = False) -> Usage:
        def get(name: str) -> int:
            return int(getattr(usage, name, None) or 0)

        return cls(
            get("input_tokens"),
            get("output_tokens"),
            get("cache_creation_input_tokens"),
            get("cache_read_input_tokens"),
            requests=1,
            batch_requests=int(batch),
        )

    def add(self, other: Usage) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def cost(self, prices: tuple[float, float]) -> float:
        """USD for these tokens; batch requests' share is taken at the batch discount."""
        p_in, p_out = prices
        usd = (
            self.input_tokens * p_in
            + self.cache_creation_input_tokens * p_in * CACHE_WRITE_FACTOR
            + self.cache_read_input_tokens * p_in * CACHE_READ_FACTOR
            + self.output_tokens * p_out
        ) / 1e6
        if self.requests and self.batch_requests:
            share = self.batch_requests / self.requests
            usd *= 1 - share * (1 - BATCH_FACTOR)
        return usd


class CostMeter:
    """Thread-safe running total of usage and cost against a budget (``None``: no limit)."""

    def __init__(self, prices: tuple[float, float], budget_usd: float | None) -> None:
        self.prices = prices
        self.budget_usd = budget_usd
        self.sync = Usage()
        self.batch = Usage()
        self._lock = threading.Lock()

    def add(self, usage: Usage) -> None:
        with self._lock:
            (self.batch if usage.batch_requests else self.sync).add(usage)

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self.sync.cost(self.prices) + self.batch.cost(self.prices)

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` once the spend reaches the budget."""
        if self.budget_usd is not None and self.spent_usd >= self.budget_usd:
            raise BudgetExceeded(
                f"budget of ${self.budget_usd:.2f} spent (${self.spent_usd:.4f}); "
                "raise budget_usd and re-run to continue from the cache"
            )

    def totals(self) -> dict[str, object]:
        total = Usage()
        total.add(self.sync)
        total.add(self.batch)
        return {**asdict(total), "cost_usd": round(self.spent_usd, 6)}
