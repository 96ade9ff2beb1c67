"""The holes an attacker's probe found in the HTTP API (issue #9), one regression test or
table per defect, in the embedded mode on SQLite and PostgreSQL (the ``db_url`` fixture).

The serving defects (migrations at first start, slow clients, gunicorn's own pages) are
tested against a real gunicorn in ``test_serving.py``; the late Twilio callback in
``test_twilio_status.py``; schemathesis runs in ``test_schemathesis.py``.
"""

from __future__ import annotations

import base64

import pytest

from tests.conftest import drain
from tests.test_api import assert_422_names, bearer, mint


@pytest.fixture
def app(app):
    yield app
    drain(app)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- 1. a crafted cursor ----------------------------------------------------------------------

CRAFTED_CURSORS = {
    "nested 2500 deep": _b64(b"[" * 2500),
    "nested objects": _b64(b'{"a":' * 3000),
    "deep and closed": _b64(b"[" * 900 + b"]" * 900),
    "not JSON": _b64(b"\xff\xfe"),
    "a number": _b64(b"1e999999"),
    "three items": _b64(b'["2025-03-01T12:00:00+00:00", "evt_x", 3]'),
    "an id that is not text": _b64(b'["2025-03-01T12:00:00+00:00", ["evt_x"]]'),
    "very long": "A" * 5000,
}


@pytest.mark.parametrize("label", list(CRAFTED_CURSORS))
@pytest.mark.parametrize("listing", ["/v1/deliveries", "/v1/notebooks/{nb}/events"])
def test_every_malformed_cursor_is_a_422_naming_it(client, admin, api, team, listing, label):
    """Any key may page; no cursor it crafts is a 500 (``RecursionError`` in the decoder)."""
    nb, _ = team
    key = bearer(mint(api, nb["id"])["key"])
    for headers in (admin, key):
        response = client.get(
            listing.format(nb=nb["id"]), headers=headers, query_string={"cursor": CRAFTED_CURSORS[label]}
        )
        assert_422_names(response, "query.cursor")
