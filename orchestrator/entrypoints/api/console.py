"""The web console at ``/console``: static files that use the REST API as any client does.

The page is plain HTML, CSS and ES modules shipped inside the package (no CDN, no build step).
Everything a saga shows comes from messages anyone on the broker may send, so the console builds
its DOM with ``textContent`` only and is served with a strict Content-Security-Policy: scripts,
styles and fetches from this origin only, no inline script or style, no frames, no forms posted
anywhere. The files are read once, when the app is built; only those are served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import RedirectResponse, Response

__all__ = ["ASSETS", "SECURITY_HEADERS", "mount_console"]

#: where the console's files are, inside the package
ASSETS = Path(__file__).with_name("console")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

#: on every answer under /console
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(ASSETS.iterdir()):
        if path.is_file() and path.suffix in _TYPES:
            files[path.name] = (path.read_bytes(), _TYPES[path.suffix])
    return files


def mount_console(app: FastAPI) -> None:
    """Serve the console's files under ``/console/``. They are not in the OpenAPI schema: the
    console is a client of the API, not part of it. The page itself holds no data, so it is
    served without a token; every read it then makes follows the API's rules."""
    files = _load()

    @app.get("/console", include_in_schema=False)
    async def console_root() -> Response:
        return RedirectResponse("console/", status_code=308, headers=SECURITY_HEADERS)

    @app.get("/console/", include_in_schema=False)
    async def console_index() -> Response:
        return _asset(files, "index.html")

    @app.get("/console/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        return _asset(files, name)


def _asset(files: dict[str, tuple[bytes, str]], name: str) -> Response:
    if name not in files:
        raise HTTPException(404, f"no console file {name!r}", headers=SECURITY_HEADERS)
    body, media_type = files[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
