"""Every request gets a request id, and every answer is counted.

The id is the caller's ``X-Request-ID`` when it is printable ASCII of at most 128 characters,
else a new one; the answer carries it back in ``X-Request-ID`` (gunicorn's access line shows
it), every log line written while the request is served carries it, and an event recorded by
the request keeps it for the jobs that route and deliver it (``careloop.logs``).
"""

from __future__ import annotations

from apiflask import APIFlask
from flask import Response, g, request

from careloop import logs, metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other is counted as ``other`` (a label value per made-up
method would let a client grow the metrics without bound)."""


def init_app(app: APIFlask) -> None:
    """Register the hooks; call it before any other ``before_request`` hook, so that whatever
    those log carries the id."""

    @app.before_request
    def _request_id():
        g.request_id = logs.accept_request_id(request.headers.get(logs.REQUEST_ID_HEADER))
        g.request_id_token = logs.set_request_id(g.request_id)

    @app.after_request
    def _answer(response: Response) -> Response:
        response.headers[logs.REQUEST_ID_HEADER] = g.get("request_id") or logs.new_request_id()
        method = request.method if request.method in METHODS else "other"
        metrics.HTTP_REQUESTS.labels(method=method, status=str(response.status_code)).inc()
        return response

    @app.teardown_request
    def _forget_request_id(_exc):
        token = g.pop("request_id_token", None)
        if token is not None:
            logs.reset_request_id(token)
