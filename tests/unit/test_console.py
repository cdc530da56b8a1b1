"""The web console's files as the service serves them, with no database behind it: each with its
content type and the strict security headers, only the files shipped, nothing in the OpenAPI
schema, and none of its scripts able to turn data into markup. What the page does in a real
browser is tested in tests/integration/test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from orchestrator.entrypoints.api.console import ASSETS
from tests.unit.test_api import build

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # reads protected: the page itself holds no data, so it is served without the token
    context, app = build(api_token="t0ken", api_open_reads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as made:
        yield made
    await context.store.close()


def secured(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/diagram.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ],
)
async def test_each_file_is_served_with_its_type_and_the_security_headers(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    secured(response)
    name = path.removeprefix("/console/") or "index.html"
    assert response.content == (ASSETS / name).read_bytes()


async def test_console_without_a_slash_redirects_and_unknown_files_are_404(client: httpx.AsyncClient) -> None:
    bare = await client.get("/console")
    missing = await client.get("/console/secrets.txt")
    climbing = await client.get("/console/..%2Fapp.py")

    assert (bare.status_code, bare.headers["location"]) == (308, "console/")
    secured(bare)
    assert missing.status_code == 404
    secured(missing)
    assert climbing.status_code == 404


def test_the_console_is_not_part_of_the_api_schema() -> None:
    _, app = build(api_token="t0ken")

    assert not [path for path in app.openapi()["paths"] if path.startswith("/console")]


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    html = (ASSETS / "index.html").read_text()

    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="app.js">']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler: the CSP would block it"


def test_no_script_turns_text_into_markup() -> None:
    """Data reaches the page through textContent and attributes only (the browser test shows it
    with markup in a key and a payload); these are the ways a script could parse markup."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment"
        r"|eval\(|new Function"
    )
    for script in sorted(ASSETS.glob("*.js")):
        found = [line for line in script.read_text().splitlines() if sinks.search(line)]
        assert not found, f"{script.name}: {found}"
