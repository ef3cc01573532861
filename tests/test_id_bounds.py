"""Every route with an integer path or query parameter, HTML and API, answers an id no store can
hold (≥ 2^31, ≥ 2^63, ≥ 2^64, negative) with 404 or 422 and a message, never a 500: the routes
are enumerated from the routers, so a new route is checked without being listed here."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.routes import api, encode, export, findings, pages
from tests.apps import app_for

VALUES = [2**31, 2**63, 2**64, -1]


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in typing.get_args(annotation)


def int_parameters() -> list[tuple[str, str, str, str]]:
    """(method, path, parameter, "path" | "query") for every integer parameter of every route."""
    out = []
    for router in (api.router, encode.router, export.router, findings.router, pages.router):
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            method = sorted(route.methods)[0]
            for where, params in (("path", route.dependant.path_params),
                                  ("query", route.dependant.query_params)):  # fmt: skip
                out += [(method, route.path, p.name, where) for p in params
                        if _is_int(p.field_info.annotation)]  # fmt: skip
    return out


def _url(path: str, name: str, where: str, value: int) -> str:
    """``path`` with ``name`` set to ``value`` and every other path parameter a valid one."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if where == "path" and key == name:
            return str(value)
        return "GO:0003677" if key == "go_id" else "1"

    url = re.sub(r"\{(\w+)\}", fill, path)
    return f"{url}?{name}={value}" if where == "query" else url


@pytest.fixture(scope="module")
def client(demo_store: Any) -> Iterator[TestClient]:
    with TestClient(app_for(demo_store.url)) as test_client:
        yield test_client


def test_the_enumeration_finds_the_reported_routes() -> None:
    found = {(path, name) for _, path, name, _ in int_parameters()}
    for reported in [("/features/{feature_id}", "feature_id"), ("/saes/{sae_id}/features", "sae_id"),
                     ("/saes/{sae_id}/map", "sae_id"), ("/runs/{run_id}/findings", "run_id"),
                     ("/structures/{structure_id}.pdb", "structure_id"),
                     ("/structures/{structure_id}.cif", "structure_id"),
                     ("/api/v1/features/{feature_id}", "feature_id"),
                     ("/saes/{sae_id}/map", "feature"), ("/proteins/{accession}", "feature")]:  # fmt: skip
        assert reported in found, reported


@pytest.mark.parametrize("value", VALUES)
def test_ids_out_of_range_are_4xx_with_a_message(client: TestClient, value: int) -> None:
    for method, path, name, where in int_parameters():
        url = _url(path, name, where, value)
        response = client.request(method, url)
        assert response.status_code in (404, 422), (url, response.status_code, response.text)
        error = response.json()["error"]
        assert error["status"] == response.status_code and error["message"], url
        if response.status_code == 422:
            assert name in error["message"], (url, error)


def test_browsers_get_an_html_error_page(client: TestClient) -> None:
    for url in ["/features/18446744073709551616", "/runs/9223372036854775808/findings",
                "/saes/1/map?feature=9223372036854775808"]:  # fmt: skip
        response = client.get(url, headers={"Accept": "text/html,application/xhtml+xml"})
        assert response.status_code == 422 and response.text.startswith("<!doctype html>"), url
        assert "less than or equal to 2147483647" in response.text, url
    missing = client.get("/runs/2147483647/findings", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and "no published run 2147483647" in missing.text
    api_error = client.get("/api/v1/features/9223372036854775808", headers={"Accept": "text/html"})
    assert api_error.status_code == 422 and api_error.json()["error"]["status"] == 422


def test_encode_ids_out_of_range(client: TestClient) -> None:
    for value in VALUES:
        api_response = client.post("/api/v1/encode", json={"sae_id": value, "sequences": ["MKV"]})
        assert api_response.status_code == 422 and "sae_id" in api_response.text
        form = client.post("/encode", data={"sae_id": str(value), "text": "MKV"})
        assert form.status_code == 422 and "sae_id" in form.text
