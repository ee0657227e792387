"""``tracked serve``'s application: the pages (a list of runs, one run's live page),
their JSON, the static files, and the status route as a Bottle app with
``TrackedPlugin``; the threaded WSGI server it runs on.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from . import State, Store, TrackedError
from ._state import make_key
from ._views import display_key, printable, recent

__all__ = ["STATIC", "STATUS_PREFIX", "QuietHandler", "ThreadingServer", "build_app"]

#: Where ``serve`` mounts the plugin's status route, as the Bottle plugin does by default.
STATUS_PREFIX = "/_progress_status"
STATIC = Path(__file__).resolve().parent / "static"


def build_app(store: Store, *, allow_cancel: bool = False) -> Any:
    """The Bottle app of ``tracked serve``: the plugin's status route, the client script,
    a page listing the progresses and a page following one of them live. With
    ``allow_cancel`` the status route takes DELETE and the page shows a Stop button."""
    import bottle

    from .bottle import TrackedPlugin

    app = bottle.Bottle()
    app.install(TrackedPlugin(store=store, prefix=STATUS_PREFIX, cancel=allow_cancel))

    def index() -> Any:
        return _static_file("serve-index.html")

    def asset(filename: str) -> Any:
        return _static_file(filename)

    reported: set[str] = set()

    def progresses() -> Any:
        everything = bottle.request.query.get("all") == "1"
        listed = [_summary(s) for s in _listed(store, everything)]
        for problem in store.unreadable():  # skipped from the list: logged once each
            if problem not in reported and len(reported) < 1024:
                reported.add(problem)
                print(f"tracked serve: skipped {printable(problem)}", file=sys.stderr)
        return _json(200, {"progresses": listed})

    def progress_page() -> Any:
        query = bottle.request.query
        try:
            key = make_key(query.getunicode("name"), query.getunicode("progress_id"))
        except TrackedError as exc:
            return _json(400, {"error": str(exc), "status": "error"})
        return _progress_page(key, allow_cancel)

    app.route("/", "GET", index, skip=True)
    app.route("/<filename:re:tracked\\.js|serve\\.css>", "GET", asset, skip=True)
    app.route("/progresses.json", "GET", progresses, skip=True)
    app.route("/progress", "GET", progress_page, skip=True)
    return app


def _listed(store: Store, everything: bool) -> list[State]:
    states = store.list()
    return states if everything else recent(states)


def _summary(state: State) -> dict[str, Any]:
    from urllib.parse import urlencode

    from ._web import status_url

    wire = state.to_dict()
    wire["messages"] = wire["messages"][-1:]
    wire["status_url"] = status_url(STATUS_PREFIX, state.key)
    page = {k: v for k, v in (("name", state.name), ("progress_id", state.progress_id)) if v}
    wire["page_url"] = "/progress?" + urlencode(page)
    return wire


def _progress_page(key: str, allow_cancel: bool = False) -> str:
    """The live page for ``key``; its name and status URL are HTML-escaped attributes."""
    import html

    from ._web import status_url as build_status_url

    status_url = build_status_url(STATUS_PREFIX, key)
    template = (STATIC / "serve-progress.html").read_text(encoding="utf-8")
    return (
        template.replace("{{status_url}}", html.escape(status_url, quote=True))
        .replace("{{label}}", html.escape(display_key(key), quote=True))
        .replace("{{cancel}}", "cancel" if allow_cancel else "")
    )


def _json(status: int, data: dict[str, Any]) -> Any:
    import bottle

    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
    return bottle.HTTPResponse(body, status=status, headers=headers)


def _static_file(name: str) -> Any:
    import bottle

    response = bottle.static_file(name, root=str(STATIC))
    response.set_header("Cache-Control", "no-cache")
    return response


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request, so many pages can poll at once; its
    listen backlog holds a burst of connections (wsgiref's 5 timed out 200 clients)."""

    daemon_threads = True
    request_queue_size = max(socket.SOMAXCONN, 1024)  # the kernel caps it at somaxconn


class QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the terminal stays for the startup line and errors. A
    client silent for ``timeout`` seconds (half a request, an unread stream) is let go,
    so idle connections do not hold threads for ever."""

    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        pass
