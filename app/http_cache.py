"""Responses of published runs: an ETag and Cache-Control on each, 304 on revalidation, and a
per-process cache of rendered bodies, each compressed once.

Published runs never change in place (only ``app.store.publish`` writes, and it renews the store's
publication id), so the publication id and the route name a response exactly. Each request reads
that id (one indexed row); when it differs from the one the cache was filled under, the cache is
emptied first. That keeps every worker of every server right after a publish or removal made by
any process, the trainer's included, without a message between them.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.queries.publication import current_token

# Reads of published data only: pages and the read API. Not the encoder (its answers depend on
# the posted sequence), not exports and weights (large, streamed), not static files or
# structures (they carry their own validators), not /healthz.
CACHEABLE = re.compile(
    r"^/(?:"
    r"|saes/\d+/(?:features|map)"
    r"|features/\d+|proteins/[^/]+|go/[^/]+|search"
    r"|findings|runs/\d+/findings(?:/[\w.-]+\.svg)?|concepts(?:/[^/]+)?"
    r"|api/v1/(?:runs|saes(?:/\d+(?:/features|/map)?)?|features/\d+|proteins/[^/]+|go/[^/]+|search)"
    r")$"
)
COMPRESSIBLE = ("text/", "application/json", "image/svg+xml", "application/javascript")
MIN_COMPRESS_BYTES = 500
# A body compressed once and kept: zlib's default, within 2 % of level 9's size on our pages at a
# third of the time. A body compressed for each request (the cache off, and what the cache does
# not keep): level 1, as nginx's default, 14 % larger than level 6 on the heaviest demo feature
# page but half the CPU (0.7 vs 1.6 ms), which is most of what such a request costs beyond it.
GZIP_LEVEL = 6
ON_THE_FLY_GZIP_LEVEL = 1
VARY = b"Accept-Encoding, HX-Request"


def store_publication(engine: Engine) -> str:
    """The store's publication id ("" when it has none: nothing is cached then); ``engine`` is
    one of its own (``AppStore.publication_engine``: read on the event loop)."""
    with engine.connect() as connection:
        return current_token(connection)


@dataclass(slots=True)
class CachedResponse:
    """One rendered 200 response: its headers (less length and encoding), plain and gzipped."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    gzipped: bytes | None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


class ResponseCache:
    """An LRU of responses bounded by bytes, valid for one publication id at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.publication = ""
        self.bytes = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def follow(self, publication: str) -> None:
        """Empty the cache when the store's publication id moved on."""
        if publication != self.publication:
            self._entries.clear()
            self.bytes = 0
            self.publication = publication

    def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CachedResponse) -> None:
        if entry.size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size


def etag(publication: str, key: str) -> str:
    """The publication id and a digest of the route (path, query, htmx or not), quoted."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return f'"{publication}-{digest}"'


def _gzip_variant(tag: str) -> str:
    return tag[:-1] + '-gz"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` against a tag and its gzip variant."""
    if not if_none_match:
        return False
    wanted = {tag, _gzip_variant(tag)}
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") in wanted:
            return True
    return False


def accepts_gzip(accept_encoding: str) -> bool:
    """True unless gzip is absent or refused with ``q=0``."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            return not re.fullmatch(r"\s*q\s*=\s*0(?:\.0*)?\s*", params)
    return False


def compressible(headers: list[tuple[bytes, bytes]]) -> bool:
    content_type = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), "")
    return content_type.startswith(COMPRESSIBLE)


class PublishedResponses:
    """ASGI middleware: validators, 304s and the response cache for the ``CACHEABLE`` routes.

    ``enabled=False`` keeps the validators and compression but renders every request (the
    benchmark's cold figures). ``publication`` reads the store's publication id (``create_app``
    passes ``store_publication`` on its store's publication engine).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool = True,
        max_bytes: int = 128 << 20,
        max_age: int = 60,
        publication: Callable[[], str],
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.cache = ResponseCache(max_bytes)
        self.cache_control = f"public, max-age={max_age}".encode()
        self.publication = publication

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not CACHEABLE.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        publication = self.publication()
        if not publication:
            await self.app(scope, receive, send)
            return
        self.cache.follow(publication)
        headers = Headers(scope=scope)
        htmx = headers.get("hx-request") == "true"
        key = f"{scope['path']}?{scope['query_string'].decode('latin-1')}{'#hx' if htmx else ''}"
        tag = etag(publication, key)
        use_gzip = accepts_gzip(headers.get("accept-encoding", ""))
        if matches(headers.get("if-none-match"), tag):
            await self._not_modified(send, _gzip_variant(tag) if use_gzip else tag)
            return
        entry = self.cache.get(key) if self.enabled else None
        if entry is None:
            entry = await self._render(scope, receive, send)
            if entry is None:  # not a 200: already sent as the app made it
                return
            # Not when another request saw a newer publication while this one rendered.
            if self.enabled and self.cache.publication == publication:
                self.cache.put(key, entry)
        await self._send(send, entry, tag, use_gzip)

    async def _render(self, scope: Scope, receive: Receive, send: Send) -> CachedResponse | None:
        """Run the app and keep its response; one that is not a 200 goes out unchanged."""
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            if message["type"] in ("http.response.start", "http.response.body"):
                messages.append(message)
            else:  # e.g. the test client's http.response.debug (template and context)
                await send(message)

        await self.app(scope, receive, keep)
        start = messages[0]
        if start["status"] != 200:
            for message in messages:
                await send(message)
            return None
        body = b"".join(
            m.get("body", b"") for m in messages[1:] if m["type"] == "http.response.body"
        )
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k not in (b"content-length", b"content-encoding", b"etag", b"cache-control", b"vary")
        ]
        gzipped = None
        if len(body) >= MIN_COMPRESS_BYTES and compressible(headers):
            level = GZIP_LEVEL if self.enabled else ON_THE_FLY_GZIP_LEVEL
            gzipped = gzip.compress(body, compresslevel=level, mtime=0)
        return CachedResponse(headers=headers, body=body, gzipped=gzipped)

    def _validators(self, tag: str) -> list[tuple[bytes, bytes]]:
        return [(b"etag", tag.encode()), (b"cache-control", self.cache_control), (b"vary", VARY)]

    async def _not_modified(self, send: Send, tag: str) -> None:
        await send({"type": "http.response.start", "status": 304, "headers": self._validators(tag)})
        await send({"type": "http.response.body", "body": b""})

    async def _send(self, send: Send, entry: CachedResponse, tag: str, use_gzip: bool) -> None:
        body, headers = entry.body, list(entry.headers)
        if use_gzip and entry.gzipped is not None:
            body, tag = entry.gzipped, _gzip_variant(tag)
            headers.append((b"content-encoding", b"gzip"))
        headers += [(b"content-length", str(len(body)).encode()), *self._validators(tag)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
