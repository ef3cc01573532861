"""Large runs through the Message Batches API (half price), with polling and resume.

Requests are submitted with their cache key as ``custom_id`` (64 hex characters, within the API's
limit), so results map back without a side table. The open batch's id is written to
``{state_dir}/open_batch.json`` before polling: a run interrupted while the batch is processing
picks the same batch up again instead of paying twice. Malformed or transiently failed results go
into a follow-up batch, up to ``malformed_retries`` times; what still fails is recorded as failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anthropic

from trainer.explain.client import (
    ClaudeClient,
    ClaudeRequest,
    ExplainAuthError,
    Outcome,
    Validator,
    tool_input,
)
from trainer.explain.costs import Usage
from trainer.explain.prompts import MalformedReply


def _submit_or_resume(client: ClaudeClient, todo: dict[str, ClaudeRequest], state: Path) -> str:
    if state.exists():
        saved = json.loads(state.read_text())
        if set(saved["keys"]) <= set(todo):
            return str(saved["batch_id"])
    client.meter.check()
    try:
        first = next(iter(todo.values()))
        batch = client.sdk.messages.batches.create(
            requests=[{"custom_id": k, "params": r.params()} for k, r in todo.items()],  # type: ignore[typeddict-item,misc]
            **first.legacy_options(),
        )
    except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as exc:
        raise ExplainAuthError(
            f"the Anthropic API rejected the key ({exc.status_code}): check ANTHROPIC_API_KEY"
        ) from exc
    client.requests_made += 1
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"batch_id": batch.id, "keys": sorted(todo)}))
    return str(batch.id)


def _wait(
    client: ClaudeClient, batch_id: str, poll_s: float, on_poll: Callable[[Any], None]
) -> None:
    while True:
        batch = client.sdk.messages.batches.retrieve(batch_id)
        client.requests_made += 1
        on_poll(batch)
        if batch.processing_status == "ended":
            return
        time.sleep(poll_s)


def run_batch(
    client: ClaudeClient,
    items: Sequence[tuple[ClaudeRequest, Validator]],
    state_dir: Path,
    *,
    poll_s: float = 30.0,
    on_poll: Callable[[Any], None] = lambda batch: None,
) -> dict[str, Outcome]:
    """Outcomes of all ``items`` by request key: cached ones first, the rest through batches."""
    out: dict[str, Outcome] = {}
    todo: dict[str, ClaudeRequest] = {}
    validators: dict[str, Validator] = {}
    for req, validate in items:
        hit = client.cached(req, validate)
        if hit is not None:
            out[req.key] = hit
        else:
            todo[req.key], validators[req.key] = req, validate
    usage: dict[str, Usage] = {k: Usage() for k in todo}
    reasons: dict[str, str] = {}
    state = state_dir / "open_batch.json"
    for _ in range(client.malformed_retries + 1):
        if not todo:
            break
        batch_id = _submit_or_resume(client, todo, state)
        _wait(client, batch_id, poll_s, on_poll)
        client.requests_made += 1
        for entry in client.sdk.messages.batches.results(batch_id):
            key = entry.custom_id
            if key not in todo:
                continue
            result = entry.result
            if result.type != "succeeded":
                error = getattr(getattr(result, "error", None), "error", None)
                reasons[key] = f"batch result {result.type}: {getattr(error, 'message', '')}"
                if getattr(error, "type", "") == "invalid_request_error":
                    out[key] = Outcome(failure=reasons[key], usage=usage[key])
                    client.cache.put(key, {"status": "failed", "reason": reasons[key]})
                    del todo[key]
                continue
            u = Usage.from_api(result.message.usage, batch=True)
            client.meter.add(u)
            usage[key].add(u)
            try:
                raw = tool_input(result.message, todo[key].tool["name"])
                value = validators[key](raw)
            except MalformedReply as exc:
                reasons[key] = f"malformed reply: {exc}"
                continue
            client.cache.put(key, {"status": "ok", "input": raw, "usage": u.__dict__})
            out[key] = Outcome(value=value, usage=usage[key])
            del todo[key]
        state.unlink(missing_ok=True)
    for key in todo:
        reason = reasons.get(key, "no result in the batch")
        if reason.startswith(
            "malformed"
        ):  # expired/overloaded results stay uncached: retried later
            client.cache.put(key, {"status": "failed", "reason": reason})
        out[key] = Outcome(failure=reason, usage=usage[key])
    return out
