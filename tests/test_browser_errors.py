"""Headless Chromium: a 4xx answer to an htmx request is shown in place (static/js/htmx_errors.js),
whether the server answers an HTML fragment (the encode form), a full HTML error page or the API's
JSON error shape, and the page is not reloaded. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_browser import SHOTS, browser, page, server  # noqa: F401

pytestmark = pytest.mark.browser


def test_encode_shows_the_servers_message_for_invalid_input(
    server: str,  # noqa: F811
    page: Any,  # noqa: F811
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{server}/encode")
    page.evaluate("window.__marker = 'still-here'")
    page.fill("#text", ">first\nMKVLAAGIVG\n>sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGJ")
    with page.expect_response(lambda r: r.url.endswith("/encode") and r.status == 422):
        page.click(".encode-form button[type=submit]")
    alert = page.locator("#results [role=alert]")
    alert.wait_for()
    text = alert.inner_text()
    assert "record 2 (sp|P69905|HBA_HUMAN, line 3): invalid character 'J' at position 17" in text
    assert page.evaluate("window.__marker") == "still-here"  # swapped in place, no reload
    assert page.locator("#results").count() == 1
    page.screenshot(path=str(SHOTS / "encode_error.png"), full_page=False)
    # Text before the first header: the other message of the parser, in the same place.
    page.fill("#text", "MKV\n>a\nMKV")
    with page.expect_response(lambda r: r.url.endswith("/encode") and r.status == 422):
        page.click(".encode-form button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#results [role=alert]').textContent.includes('before the first')"
    )


def test_list_errors_are_shown_in_place_and_cleared(
    server: str,  # noqa: F811
    page: Any,  # noqa: F811
    demo_store: Any,
) -> None:
    url = f"/saes/{demo_store.sae_id}/features"
    page.goto(f"{server}{url}")
    rows = page.locator("#results tbody tr").count()
    assert rows > 0
    # A full HTML error page (422: a cursor that is no keyset position) ...
    page.evaluate(
        f"htmx.ajax('GET', '{url}?cursor=junk', {{target: '#results', swap: 'outerHTML'}})"
    )
    alert = page.locator(".htmx-error")
    alert.wait_for()
    assert alert.get_attribute("data-status") == "422"
    assert "cursor 'junk' is not" in alert.inner_text()
    assert page.locator("#results tbody tr").count() == rows  # the list is left as it was
    # ... and the JSON error shape (an invalid sort), in the same alert.
    page.evaluate(
        f"htmx.ajax('GET', '{url}?sort=bogus', {{target: '#results', swap: 'outerHTML'}})"
    )
    page.wait_for_function(
        "document.querySelector('.htmx-error').textContent.includes('query sort')"
    )
    assert page.locator(".htmx-error").count() == 1
    page.screenshot(path=str(SHOTS / "feature_list_error.png"), full_page=False)
    # The next request that succeeds clears it.
    page.fill("input[name=density_min_pct]", "0")
    page.locator("input[name=density_min_pct]").dispatch_event("change")
    page.wait_for_function("document.querySelector('.htmx-error') === null")
    assert page.locator("#results tbody tr").count() > 0
