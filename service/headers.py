"""Headers careloop puts on every response (the place for response-wide headers)."""

from __future__ import annotations

from apiflask import APIFlask
from flask import Response

NO_STORE = "no-store"
"""Answers carry health data: no browser, proxy or CDN may keep a copy. Responses that say
otherwise themselves (the docs page's static assets) keep what they say."""


def init_app(app: APIFlask) -> None:
    @app.after_request
    def _response_headers(response: Response) -> Response:
        response.headers.setdefault("Cache-Control", NO_STORE)
        return response
