"""Text careloop accepts, and untrusted text written into a log line.

Names, titles, places and ids are *one line*: no control characters (CR, LF, TAB, ESC, …,
C1 included) and no Unicode line or paragraph separators, so a stored value can never start
a line of its own in an email header, an iCalendar property, a console or a log. Free prose
(a note, a concern) may hold line breaks and tabs, but no other control character. Both must
hold something besides white space.

Each rule is one regular expression: the API checks it and publishes it in the OpenAPI
document as the field's ``pattern``, so a client (or schemathesis) knows exactly what is
accepted. Surrounding white space is then stripped from the stored value.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from pydantic import AfterValidator, Field

_LINE_CHAR = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_PROSE_CHAR = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"

SINGLE_LINE = rf"^{_LINE_CHAR}*[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]{_LINE_CHAR}*$"
"""One line of text with something besides white space in it."""

PROSE = rf"^{_PROSE_CHAR}*[^\s\x00-\x1f\x7f-\x9f]{_PROSE_CHAR}*$"
"""Free text: line breaks and tabs allowed, other control characters not; not blank."""

IDENTIFIER = r"^[A-Za-z0-9_-]{1,40}$"
"""A careloop id (``mem_…``, ``nb_…``) as a reference to one: letters, digits, ``_`` and ``-``."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check(pattern: str, message: str):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value.strip()

    return check


def text_type(pattern: str, message: str, max_length: int, **schema):
    """A str field checked by ``pattern`` (fullmatch, ``message`` when it fails) and at most
    ``max_length`` characters, documented with both; surrounding white space is stripped."""
    return Annotated[
        str,
        Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": pattern, **schema}),
        AfterValidator(_check(pattern, message)),
    ]


def line(max_length: int):
    """One line of text (a name, a title, a place, an id) of at most ``max_length`` characters."""
    return text_type(SINGLE_LINE, "must be one line of text without control characters", max_length)


def prose(max_length: int):
    """Free text of at most ``max_length`` characters: line breaks and tabs allowed."""
    return text_type(
        PROSE, "must not contain control characters other than line breaks and tabs", max_length
    )


def identifier():
    """A reference to a careloop id (``mem_…``); whether it exists is checked elsewhere."""
    return text_type(IDENTIFIER, "is not a careloop id", 40)


def for_log(value: object) -> str:
    """``value`` as it may appear in a log or console line: control characters and line
    separators escaped (``\\r``, ``\\n``, ``\\x1b``, ``\\u2028``), so it can never forge a line."""
    text = str(value)
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""careloop's log line (the CLI's and gunicorn's application log)."""


class LogFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part goes through :func:`for_log`: whatever
    a log call was given (a name, a header, a form field), it stays on its own line. A
    traceback appended to the record keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = for_log(record.message)
        return super().formatMessage(record)
