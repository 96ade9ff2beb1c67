"""Opaque keyset cursors: newest first, stable under concurrent inserts."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from apiflask import abort


def encode_cursor(when: datetime, ident: str) -> str:
    raw = json.dumps([when.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        parsed = datetime.fromisoformat(when)
        if parsed.tzinfo is None or not isinstance(ident, str) or "\x00" in ident:
            raise ValueError
        parsed.astimezone(UTC)  # out of range for the database → OverflowError
        return parsed, ident
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError):
        abort(422, "Validation error", detail={"query": {"cursor": ["not a cursor this API returned"]}})
