"""Pages for people (server-rendered HTML), beside the JSON API: the shared layout
(``templates/base.html``), the stylesheet and icon (``/assets/…``), and the headers every
private page answers with. Member pages use it; so can any later page (a timeline).

No JavaScript and no build step: Jinja templates and one stylesheet, shipped in the package.
"""

from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""Pages load their own stylesheet and icon and nothing else; no script runs at all."""

PRIVATE_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}
"""A private page is never stored by a browser or proxy, never sends its address (a token)
on as a Referer, runs no script, cannot be framed and is not indexed."""


def private_page(response: Response) -> Response:
    """``response`` with :data:`PRIVATE_PAGE_HEADERS` (a global header set by the app's own
    security layer is not weakened: these are set, not defaulted)."""
    response.headers.update(PRIVATE_PAGE_HEADERS)
    return response


@bp.after_request
def _asset_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
