"""A small STAC API on loopback for the tests: landing page, conformance and item search.

Real HTTP on 127.0.0.1 that pystac-client talks to; search filters by collections,
bbox and datetime (GET and POST), enough for the land-cover flow's search.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
]


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _in_range(stamp: str | None, interval: str | None) -> bool:
    if not interval or stamp is None:
        return True
    start, _, end = interval.partition("/")
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if start not in ("", "..") and when < datetime.fromisoformat(start.replace("Z", "+00:00")):
        return False
    return end in ("", "..") or when <= datetime.fromisoformat(end.replace("Z", "+00:00"))


def search(items: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    collections = params.get("collections")
    bbox = params.get("bbox")
    found = []
    for item in items:
        if collections and item.get("collection") not in collections:
            continue
        if bbox and not _overlaps(item["bbox"], [float(v) for v in bbox]):
            continue
        if not _in_range(item["properties"].get("datetime"), params.get("datetime")):
            continue
        found.append(item)
    return found[: int(params.get("limit") or len(found) or 1)]


def query_params(text: str) -> dict[str, Any]:
    """GET search parameters: comma lists for collections and bbox."""
    params: dict[str, Any] = {k: v[0] for k, v in parse_qs(text).items()}
    for key in ("collections", "bbox"):
        if key in params:
            params[key] = params[key].split(",")
    return params


def _handler(items: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, body: dict[str, Any], kind: str = "application/json") -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _base(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

        def _results(self, params: dict[str, Any]) -> None:
            found = search(items, params)
            self._send(
                {"type": "FeatureCollection", "features": found, "links": []},
                "application/geo+json",
            )

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            base = self._base()
            if parts.path in ("", "/"):
                self._send(
                    {
                        "type": "Catalog",
                        "id": "loopback",
                        "stac_version": "1.0.0",
                        "description": "test API",
                        "conformsTo": CONFORMANCE,
                        "links": [
                            {"rel": "self", "href": base + "/"},
                            {"rel": "root", "href": base + "/"},
                            {"rel": "conformance", "href": base + "/conformance"},
                            {
                                "rel": "search",
                                "href": base + "/search",
                                "method": "GET",
                                "type": "application/geo+json",
                            },
                            {
                                "rel": "search",
                                "href": base + "/search",
                                "method": "POST",
                                "type": "application/geo+json",
                            },
                        ],
                    }
                )
            elif parts.path == "/conformance":
                self._send({"conformsTo": CONFORMANCE})
            elif parts.path == "/search":
                self._results(query_params(parts.query))
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/search":
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            self._results(json.loads(self.rfile.read(length) or b"{}"))

    return Handler


@contextmanager
def stac_api(items: list[dict[str, Any]]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(items))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
