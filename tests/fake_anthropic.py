"""A small real HTTP server that speaks enough of the Anthropic Messages API for the SDK.

It implements ``POST /v1/messages`` and the Message Batches endpoints (create, retrieve, results
as JSONL). Replies are *derived from the request*, so tests can check what reached the prompt:

- explain (tool ``record_explanation``): names the GO term most over-represented among the
  strongly active proteins of the prompt (share among activation >= 0.5 minus share among the
  inactive), as ``Fires on proteins annotated with "<term name>".``
- score (tool ``record_predictions``): predicts each listed protein from whether its metadata
  contains the quoted term of the explanation (0.9), else the share of its words present × 0.3.

``faults`` is a queue consumed by ``POST /v1/messages``: ``"429"``, ``"500"``, ``"malformed"``
(wrong tool input), ``"text"`` (no tool call). Usage is counted as len(text) // 4 per part, with
the cached system block reported as a cache write the first time and a cache read afterwards.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GO_LINE = re.compile(r"^GO [a-z ]+: (.*)$", re.M)
TERM = re.compile(r"([^;]+?) \((GO:\d{7})\)")


def _blocks(prompt: str) -> list[str]:
    return [b for b in prompt.split("### ")[1:]]


def _terms(block: str) -> set[str]:
    names: set[str] = set()
    for line in GO_LINE.findall(block):
        names.update(n.strip() for n, _ in TERM.findall(line))
    return names


def derive_explanation(prompt: str) -> str:
    high, off = [], []
    for block in _blocks(prompt):
        m = re.search(r"^activation: ([0-9.]+)$", block, re.M)
        act = float(m.group(1)) if m else 0.0
        if act >= 0.5:
            high.append(_terms(block))
        elif act == 0.0:
            off.append(_terms(block))
    c_high = Counter(t for s in high for t in s)
    c_off = Counter(t for s in off for t in s)
    if not c_high:
        return "Fires on no recognisable annotation."
    best = max(
        c_high, key=lambda t: (c_high[t] / len(high) - c_off[t] / max(len(off), 1), c_high[t], t)
    )
    text = f'Fires on proteins annotated with "{best}".'
    sites = re.findall(r"^fires most at: ([A-Z])\d+ in", prompt, re.M)
    if sites:
        residue = Counter(sites).most_common(1)[0][0]
        text = text[:-1] + f", mostly at {residue} residues."
    return text


def derive_predictions(prompt: str) -> list[dict[str, Any]]:
    m = re.search(r'"([^"]+)"', prompt.split("\n\n", 1)[0])
    phrase = m.group(1).lower() if m else ""
    words = [w for w in re.findall(r"[a-z0-9]+", phrase) if len(w) > 2]
    out = []
    for block in _blocks(prompt):
        acc = block.split("\n", 1)[0].strip()
        text = block.lower()
        if phrase and phrase in text:
            value = 0.9
        elif words:
            value = 0.3 * sum(w in text for w in words) / len(words)
        else:
            value = 0.0
        out.append({"id": acc, "activation": round(value, 4)})
    return out


class FakeAnthropic:
    """Run with ``with FakeAnthropic() as fake:``; point the SDK at ``fake.base_url``."""

    def __init__(self, api_key: str = "sk-test-fake", polls_before_end: int = 1) -> None:
        self.api_key = api_key
        self.polls_before_end = polls_before_end
        self.faults: list[str] = []
        self.log: list[dict[str, Any]] = []  # every request: method, path, body
        self.batches: dict[str, dict[str, Any]] = {}
        self._seen_systems: set[str] = set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def messages(self) -> list[dict[str, Any]]:
        """Bodies of the POST /v1/messages requests received (including faulted ones)."""
        return [e["body"] for e in self.log if e["path"] == "/v1/messages"]

    # -- replies -----------------------------------------------------------------------------
    def reply(self, params: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
        tool = params["tool_choice"]["name"]
        prompt = params["messages"][0]["content"]
        if tool == "record_explanation":
            tool_input: dict[str, Any] = {"explanation": derive_explanation(prompt)}
        else:
            tool_input = {"predictions": derive_predictions(prompt)}
        if fault == "malformed":
            tool_input = {"answer": "not what the tool asked for"}
        system = "".join(b["text"] for b in params["system"])
        with self._lock:
            seen = system in self._seen_systems
            self._seen_systems.add(system)
        sys_tokens = len(system) // 4
        content: list[dict[str, Any]] = [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:12]}",
                "name": tool,
                "input": tool_input,
            }
        ]
        if fault == "text":
            content = [{"type": "text", "text": "I think it is about kinases."}]
        return {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": params["model"],
            "content": content,
            "stop_reason": "tool_use" if fault != "text" else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": (len(prompt) + len(json.dumps(params["tools"]))) // 4,
                "output_tokens": len(json.dumps(tool_input)) // 4,
                "cache_creation_input_tokens": 0 if seen else sys_tokens,
                "cache_read_input_tokens": sys_tokens if seen else 0,
            },
        }

    def batch_object(self, batch_id: str) -> dict[str, Any]:
        b = self.batches[batch_id]
        ended = b["polls"] > self.polls_before_end
        n = len(b["requests"])
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else n,
                "succeeded": n if ended else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": "2026-01-01T00:01:00Z" if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{batch_id}/results"
            if ended
            else None,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(
                self,
                code: int,
                body: Any,
                headers: dict[str, str] | None = None,
                jsonl: bool = False,
            ) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header(
                    "content-type", "application/x-jsonl" if jsonl else "application/json"
                )
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(
                self, code: int, kind: str, message: str, headers: dict[str, str] | None = None
            ) -> None:
                self._send(
                    code, {"type": "error", "error": {"type": kind, "message": message}}, headers
                )

            def _authorised(self) -> bool:
                # SDK 2.x sends "Authorization: Bearer <key>"; older ones send x-api-key.
                bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
                if fake.api_key not in (bearer, self.headers.get("x-api-key")):
                    self._error(401, "authentication_error", "invalid x-api-key")
                    return False
                return True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake._lock:
                    fake.log.append({"method": "POST", "path": self.path, "body": body})
                if not self._authorised():
                    return
                if self.path == "/v1/messages":
                    with fake._lock:
                        fault = fake.faults.pop(0) if fake.faults else None
                    if fault == "429":
                        self._error(429, "rate_limit_error", "slow down", {"retry-after-ms": "10"})
                    elif fault == "500":
                        self._error(500, "api_error", "internal", {"retry-after-ms": "10"})
                    else:
                        self._send(200, fake.reply(body, fault))
                elif self.path == "/v1/messages/batches":
                    batch_id = f"msgbatch_{uuid.uuid4().hex[:12]}"
                    with fake._lock:
                        fake.batches[batch_id] = {"requests": body["requests"], "polls": 0}
                    self._send(200, fake.batch_object(batch_id))
                else:
                    self._error(404, "not_found_error", self.path)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.log.append({"method": "GET", "path": self.path, "body": None})
                if not self._authorised():
                    return
                m = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", self.path)
                if not m or m.group(1) not in fake.batches:
                    self._error(404, "not_found_error", self.path)
                    return
                batch_id = m.group(1)
                if m.group(2):
                    lines = [
                        json.dumps(
                            {
                                "custom_id": r["custom_id"],
                                "result": {"type": "succeeded", "message": fake.reply(r["params"])},
                            }
                        )
                        for r in fake.batches[batch_id]["requests"]
                    ]
                    self._send(200, "\n".join(lines) + "\n", jsonl=True)
                else:
                    with fake._lock:
                        fake.batches[batch_id]["polls"] += 1
                    self._send(200, fake.batch_object(batch_id))

        return Handler
