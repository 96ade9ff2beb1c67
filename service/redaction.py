"""Member-link, sign-in-link and calendar-feed tokens never reach a log line.

A token in a request line (``GET /m/<token>``) would land in the web server's access log:
werkzeug's in development, gunicorn's in production (the Procfile logs every request). A
filter on those loggers replaces the token before any handler formats the line.
"""

from __future__ import annotations

import logging
import re

from careloop.calendar_feeds import FEED_PATH
from careloop.links import redact as redact_member_links
from careloop.signin_links import LINK_PATH as SIGNIN_LINK_PATH

_SIGNIN_TOKEN = re.compile(rf"({re.escape(SIGNIN_LINK_PATH)})[^\s?#\"']+")
_FEED_TOKEN = re.compile(rf"({re.escape(FEED_PATH)})[^\s?#\"'/]+")


def redact(text: str) -> str:
    """``text`` with member-link, sign-in-link and calendar-feed tokens replaced by ``[token]``."""
    return _FEED_TOKEN.sub(r"\1[token]", _SIGNIN_TOKEN.sub(r"\1[token]", redact_member_links(text)))


REQUEST_LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error")
"""The loggers that write request lines: werkzeug's server, gunicorn's access and error logs."""


class TokenRedactor(logging.Filter):
    """Rewrites a record whose message holds a member-link token; passes every record on."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def install() -> None:
    """Put the redactor on every request logger (once, however many apps are built)."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactor) for f in logger.filters):
            logger.addFilter(TokenRedactor())
