"""Catching what must never reach a log line: every record any logger emits during a run,
formatted as a handler would write it (message, arguments, exception and stack text), and the
forms a secret or a contact detail can take in one (a phone with or without its ``+``, URL-
encoded, national digits; an email in any case)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

PEER_LOGGERS = ("mail.log",)
"""Loggers of the tests' own stand-ins at the network edge (aiosmtpd is the mail server, and a
mail server's log holds addresses): not careloop's lines."""


class Everything(logging.Handler):
    """Keeps every record, at every level, formatted in full (the peers' aside)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(PEER_LOGGERS):
            self.lines.append(self.format(record))


@contextmanager
def every_log_line() -> Iterator[list[str]]:
    """Every log line written inside the block, from any logger (loggers that do not
    propagate included), at DEBUG and up."""
    handler = Everything()
    root = logging.getLogger()
    loggers = [root] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.setLevel(levels[logger])


def phone_forms(phone: str) -> set[str]:
    digits = phone.lstrip("+")
    return {phone, digits, quote(phone), digits[-10:]}


def leaks(lines: Iterable[str], secrets: dict[str, Iterable[str]], harmless: Iterable[str] = ()) -> list[str]:
    """``"<what>: <line>"`` for every line holding one of the secrets (case-insensitive), once
    the ``harmless`` strings are taken out (the test Twilio token is a substring of its SID)."""
    found = []
    for line in lines:
        lowered = line.lower()
        for text in harmless:
            lowered = lowered.replace(text.lower(), "")
        for what, values in secrets.items():
            for value in values:
                if value and value.lower() in lowered:
                    found.append(f"{what} ({value[:4]}…): {line[:300]}")
    return found


BEARER = re.compile(r"bearer\s+\S+", re.IGNORECASE)
