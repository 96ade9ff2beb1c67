"""careloop's log lines: JSON or text, each carrying the request id of the work it is about.

A request id is taken from an incoming ``X-Request-ID`` (printable ASCII, at most 128
characters) or made, returned in the response's ``X-Request-ID``, and kept with the event it
recorded (``event.context["request_id"]``), so the routing job and every delivery job log the
same id: one grep of it shows an event's whole path through web and worker logs.

``CARELOOP_LOG_FORMAT`` is ``json`` (one JSON object per line: ``ts``, ``level``, ``logger``,
``message``, ``request_id``, ``pid``, and ``exc`` for a traceback) or ``text`` (the escaped
one-line format). Unset, the long-running processes (gunicorn's web process, ``careloop
worker``, ``careloop relay``) write JSON and one-shot commands at a terminal write text.

What goes into a message is careloop's to keep clean (ids, statuses, reasons — never a
phone, an address, a message body or a secret); the text format escapes control characters
and the JSON format cannot be broken out of.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from careloop.text import LOG_FORMAT, LogFormatter

FORMAT_VARIABLE = "CARELOOP_LOG_FORMAT"
"""The environment variable choosing ``json`` or ``text`` log lines."""

FORMATS = ("json", "text")

REQUEST_ID_HEADER = "X-Request-ID"

REQUEST_ID_MAX = 128
"""Characters an incoming request id may have; a longer one is replaced by a new one."""

_REQUEST_ID = re.compile(r"[\x21-\x7e][\x20-\x7e]*")
"""Printable ASCII (spaces inside allowed), not starting with a space."""

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("careloop_request_id", default=None)


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The caller's request id if it is printable ASCII of at most 128 characters, else a new one."""
    if value and len(value) <= REQUEST_ID_MAX and _REQUEST_ID.fullmatch(value) and not value.endswith(" "):
        return value
    return new_request_id()


def current_request_id() -> str | None:
    """The request id of the work in hand in this thread (None outside any)."""
    return _current.get()


def set_request_id(request_id: str | None) -> contextvars.Token:
    """Make ``request_id`` the current one; returns a token for :func:`reset_request_id`."""
    return _current.set(request_id)


def reset_request_id(token: contextvars.Token) -> None:
    _current.reset(token)


@contextmanager
def request_id_bound(request_id: str | None) -> Iterator[None]:
    """Log lines written inside carry ``request_id`` (jobs: the id stored with their event)."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)


_EMAIL = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
_PHONE = re.compile(r"\+?\d[\d ().-]{6,}\d")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def without_contacts(text: str) -> str:
    """``text`` (a provider's reason, say) with anything that looks like an email address or a
    phone number replaced by ``[email]`` / ``[phone]``: for lines an operator's terminal shows."""
    return _PHONE.sub(_phone, _EMAIL.sub("[email]", text))


def _phone(match: re.Match) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    # a number of 8 digits or more, not an IPv4 address or an SMTP status code
    return "[phone]" if digits >= 8 and not _IPV4.fullmatch(found) else found


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``) its handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, request_id, pid,
    and exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _current.get(),
            "pid": record.process,
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=True, default=str)


class TextFormatter(LogFormatter):
    """careloop's escaped one-line format, with the request id when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request_id={request_id}]" if request_id else line


def log_format(default: str = "text") -> str:
    """``CARELOOP_LOG_FORMAT`` if set, else ``default``.

    Raises:
        ValueError: when it is set to something other than ``json`` or ``text``.
    """
    chosen = os.environ.get(FORMAT_VARIABLE, "").strip().lower() or default
    if chosen not in FORMATS:
        raise ValueError(f"{FORMAT_VARIABLE} must be json or text, not {chosen!r}")
    return chosen


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (``json`` or ``text``) lines."""
    return JsonFormatter() if fmt == "json" else TextFormatter(LOG_FORMAT)


def make_handler(fmt: str) -> logging.Handler:
    """A stderr handler writing ``fmt`` lines, with the request id on each."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(RequestIdFilter())
    return handler


def configure(default: str = "text", level: int = logging.INFO) -> str:
    """Send the root logger's records to stderr in ``CARELOOP_LOG_FORMAT`` (else ``default``);
    returns the format chosen. A root logger that has handlers already (a test runner's) is
    left as it is, as :func:`logging.basicConfig` does.

    Raises:
        ValueError: when ``CARELOOP_LOG_FORMAT`` is neither ``json`` nor ``text``.
    """
    fmt = log_format(default)
    logging.basicConfig(level=level, handlers=[make_handler(fmt)])
    return fmt
