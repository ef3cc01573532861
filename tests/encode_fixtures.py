"""Fixtures for the encode/export/client tests: the demo store served in-process or live."""

from __future__ import annotations

import csv
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.apps import app_for


def human_proteins(
    shared: Path, n: int, min_len: int = 50, max_len: int = 400
) -> list[dict[str, str]]:
    """The first ``n`` real human Swiss-Prot entries within a length range."""
    out = []
    with gzip.open(shared / "data/proteins/human_sprot2014.tsv.gz", "rt", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if min_len <= int(row["length"]) <= max_len:
                out.append(row)
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def encode_client(demo_store) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app_for(demo_store.url)) as client:
        yield client


def free_port(low: int = 8200, high: int = 8300) -> int:
    for port in range(low, high):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8200-8299")


@pytest.fixture(scope="module")
def live_server(demo_store) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app served by uvicorn in a thread on a port in 8200-8299; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app_for(demo_store.url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
