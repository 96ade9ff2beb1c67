"""Keyset cursors: newest first, stable under concurrent inserts.

A cursor is the last item's sort key as plain text, ``<microseconds since the Unix epoch>.<id>``
(``1740830400000000.evt_…``). Its whole syntax is one regular expression, published in the
OpenAPI document, so every string that matches it is a cursor the API can page from and every
other string is refused as a 422 before anything decodes it: there is no parser to attack.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CURSOR_PATTERN = r"^(-?[0-9]{1,16}\.[A-Za-z0-9_]{1,40})?$"
"""Sixteen digits of microseconds reach 316 years either side of 1970: every date careloop
stores (1900–2200), and none that Python's datetime cannot hold. Empty means the first page."""


def _check_cursor(value: str) -> str:
    if not re.fullmatch(CURSOR_PATTERN, value):
        raise ValueError("not a cursor this API returned")
    return value


Cursor = Annotated[
    str,
    Field(
        max_length=58,
        description="`next_cursor` of the previous page",
        json_schema_extra={"pattern": CURSOR_PATTERN, "example": "1740830400000000.evt_0123456789abcdef0123"},
    ),
    AfterValidator(_check_cursor),
]


def encode_cursor(when: datetime, ident: str) -> str:
    return f"{(when - EPOCH) // timedelta(microseconds=1)}.{ident}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a :data:`Cursor` names; the query validation has checked its syntax."""
    micros, _, ident = cursor.partition(".")
    return EPOCH + timedelta(microseconds=int(micros)), ident
