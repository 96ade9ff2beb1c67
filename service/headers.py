"""Headers careloop puts on every response (the place for response-wide headers).

Every answer: ``Cache-Control: no-store`` (unless it says otherwise), ``X-Content-Type-Options:
nosniff``, ``Referrer-Policy: no-referrer`` (a member-link token is never sent on as a
Referer), and a ``Content-Security-Policy``: JSON answers may load nothing and never be framed;
HTML pages get a strict policy of their own — the member pages set theirs (``pages``), and
the one other page, ``/docs``, may run only its own scripts: the files it loads from careloop
and its inline script, allowed by hash. No answer names the server software (gunicorn's
``Server`` header is dropped in ``config/gunicorn.conf.py``).
"""

from __future__ import annotations

import base64
import hashlib
import re

from apiflask import APIFlask
from flask import Response

NO_STORE = "no-store"
"""Answers carry health data: no browser, proxy or CDN may keep a copy. Responses that say
otherwise themselves (the docs page's static assets) keep what they say."""

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""For anything that is not a page: nothing may load or run, and nothing may frame it."""

DOCS_CSP = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""For an HTML page with no policy of its own (``/docs``): its own files, and its inline scripts
by hash (Swagger UI styles elements inline, so styles may be inline; scripts may not)."""

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def _script_hashes(html: bytes) -> str:
    digests = (hashlib.sha256(script).digest() for script in _INLINE_SCRIPT.findall(html))
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


def init_app(app: APIFlask) -> None:
    @app.after_request
    def _response_headers(response: Response) -> Response:
        response.headers.setdefault("Cache-Control", NO_STORE)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if "Content-Security-Policy" not in response.headers:
            if response.mimetype == "text/html" and not response.is_streamed:
                policy = DOCS_CSP.format(hashes=_script_hashes(response.get_data()))
            else:
                policy = API_CSP
            response.headers["Content-Security-Policy"] = policy
        response.headers.pop("Server", None)
        return response
