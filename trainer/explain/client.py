"""Claude requests with structured replies, an on-disk cache, retries and cost accounting.

Every request is identified by the sha256 of its exact parameters (model, system, prompt, tool,
temperature, max tokens). A finished request — a validated reply, or a failure after the
malformed-reply retries — is written to the cache atomically, so re-running costs nothing and an
interrupted run continues where it stopped. Transient errors (429, 5xx, timeouts, connection) are
retried by the SDK (``max_retries``, honouring ``retry-after``) and then by our own exponential
backoff; they are never cached, so a later run tries again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic

from app.atomic_write import write_atomic
from trainer.explain.costs import CostMeter, Usage
from trainer.explain.prompts import MalformedReply

LEGACY_API_VERSION = "2023-06-01"  # the last API version that accepts temperature
Validator = Callable[[dict[str, Any]], Any]


class ExplainAuthError(RuntimeError):
    """The API key was rejected (401/403)."""


@dataclass(frozen=True)
class ClaudeRequest:
    """One Messages API call whose reply must be the forced tool's input."""

    model: str
    system: str
    prompt: str
    tool: dict[str, Any]
    temperature: float | None
    max_tokens: int

    def params(self) -> dict[str, Any]:
        """The request body (also a batch request's ``params``).

        API version 2026-10-21 (the SDK 2.x default) rejects sampling parameters, so
        ``temperature`` is sent only when set, and then under the legacy API version
        (see :meth:`legacy_options`).
        """
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        return {
            **extra,
            "model": self.model,
            "max_tokens": self.max_tokens,
            # The shared instructions are identical across features: cache them.
            "system": [
                {"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [self.tool],
            "tool_choice": {"type": "tool", "name": self.tool["name"]},
            "messages": [{"role": "user", "content": self.prompt}],
        }

    def legacy_options(self) -> dict[str, Any]:
        """SDK call options that carry ``temperature`` (absent from SDK 2.x's signature)."""
        if self.temperature is None:
            return {}
        return {"extra_headers": {"anthropic-version": LEGACY_API_VERSION}}

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``messages.create``."""
        body = self.params()
        temperature = body.pop("temperature", None)
        if temperature is None:
            return body
        return {**body, **self.legacy_options(), "extra_body": {"temperature": temperature}}

    @property
    def key(self) -> str:
        blob = json.dumps(self.params(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Outcome:
    """A request's validated value, or why it failed; ``cached``: no request was made now."""

    value: Any = None
    failure: str | None = None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False


class ResponseCache:
    """One JSON file per request key under ``root`` (written via a temporary file and rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            record: dict[str, Any] = json.loads(p.read_text())
        except json.JSONDecodeError:  # a torn write cannot happen (rename), but be safe
            return None
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_atomic(self.path(key), json.dumps(record, ensure_ascii=False))


def tool_input(message: Any, tool_name: str) -> dict[str, Any]:
    """The input of the ``tool_name`` tool_use block of a reply, or :class:`MalformedReply`."""
    for block in getattr(message, "content", None) or []:
        if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == tool_name:
            value = block.input
            if not isinstance(value, dict):
                raise MalformedReply("tool input is not an object")
            return value
    raise MalformedReply(
        f"no {tool_name} tool call in the reply (stop_reason={getattr(message, 'stop_reason', None)})"
    )


TRANSIENT = (
    anthropic.RateLimitError,
    anthropic.InternalServerError,
    anthropic.APITimeoutError,
    anthropic.APIConnectionError,
)


class ClaudeClient:
    """The official SDK plus cache, validation retries, outer backoff and a cost meter."""

    def __init__(
        self,
        api_key: str,
        cache_dir: Path,
        meter: CostMeter,
        *,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        outer_retries: int = 2,
        backoff_s: float = 5.0,
        malformed_retries: int = 2,
        retry_failed: bool = False,
    ) -> None:
        self.sdk = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )
        self.cache = ResponseCache(cache_dir)
        self.meter = meter
        self.outer_retries = outer_retries
        self.backoff_s = backoff_s
        self.malformed_retries = malformed_retries
        self.retry_failed = retry_failed
        self._lock = threading.Lock()
        self.requests_made = 0  # HTTP calls that reached our code (SDK-internal retries excluded)

    def cached(self, req: ClaudeRequest, validate: Validator) -> Outcome | None:
        """The finished outcome of ``req`` from the cache, if any (re-validated)."""
        rec = self.cache.get(req.key)
        if rec is None or (rec["status"] == "failed" and self.retry_failed):
            return None
        if rec["status"] == "failed":
            return Outcome(failure=rec["reason"], cached=True)
        try:
            return Outcome(value=validate(rec["input"]), cached=True)
        except MalformedReply:
            return None  # the validator got stricter since: ask again

    def _create(self, req: ClaudeRequest) -> Any:
        for attempt in range(self.outer_retries + 1):
            try:
                with self._lock:
                    self.requests_made += 1
                return self.sdk.messages.create(**req.create_kwargs())
            except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as exc:
                raise ExplainAuthError(
                    f"the Anthropic API rejected the key ({exc.status_code}): check "
                    "ANTHROPIC_API_KEY"
                ) from exc
            except TRANSIENT:
                if attempt == self.outer_retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def call(self, req: ClaudeRequest, validate: Validator) -> Outcome:
        """Send ``req`` (unless cached), validate the reply, retry malformed ones, cache the end."""
        hit = self.cached(req, validate)
        if hit is not None:
            return hit
        self.meter.check()
        total = Usage()
        reason = "no attempt"
        for _ in range(self.malformed_retries + 1):
            try:
                message = self._create(req)
            except TRANSIENT as exc:  # not cached: a later run tries again
                return Outcome(failure=f"transient error after retries: {exc}", usage=total)
            usage = Usage.from_api(message.usage)
            self.meter.add(usage)
            total.add(usage)
            try:
                raw = tool_input(message, req.tool["name"])
                value = validate(raw)
            except MalformedReply as exc:
                reason = f"malformed reply: {exc}"
                continue
            self.cache.put(req.key, {"status": "ok", "input": raw, "usage": usage.__dict__})
            return Outcome(value=value, usage=total)
        self.cache.put(req.key, {"status": "failed", "reason": reason, "usage": total.__dict__})
        return Outcome(failure=reason, usage=total)
