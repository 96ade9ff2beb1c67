"""CalDAV: a check-in written to (or removed from) a calendar collection, with the ``caldav``
client library (RFC 4791).

One resource per check-in, at ``{collection}/{UID}.ics``: the whole check-in as a calendar
keeps it (:func:`careloop.integrations.calendar_invite.build_calendar`), PUT byte for byte
through the library's client (its ``Event.save`` would parse the object again and raise its
SEQUENCE, and the calendar must hold exactly careloop's UIDs and SEQUENCEs), or DELETEd once
the check-in is cancelled (already gone counts as done).
Every request gives up after ``timeout`` seconds; nothing here retries (the publish job's
outbox entry does). No Flask, no RQ. Errors never carry the password or the calendar's body.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import quote

import caldav
from caldav.lib import error as dav_error

from careloop.integrations.base import DEFAULT_TIMEOUT

# The library logs every request's headers and body at DEBUG (a check-in's title and time, the
# calendar's answer): none of it may reach careloop's logs, whatever level they run at.
logging.getLogger("caldav").setLevel(logging.WARNING)

CONTENT_TYPE = 'text/calendar; charset="utf-8"'
"""What a PUT says it carries (RFC 4791 §5.3.2)."""


class PublishError(Exception):
    """The calendar did not take the change; ``reason`` is safe to store and log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CaldavTarget:
    """A calendar collection and how to sign in to it (the password is never shown)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def resource_url(target: CaldavTarget, uid: str) -> str:
    """Where a check-in with this UID lives in the collection."""
    return target.url.rstrip("/") + "/" + quote(uid, safe="@.-_") + ".ics"


class CaldavPublisher:
    """Writes check-ins to one CalDAV collection.

    Args:
        target: the collection's URL and credentials.
        timeout: seconds each request may take (connect and read).
    """

    def __init__(self, target: CaldavTarget, timeout: float = DEFAULT_TIMEOUT):
        if timeout <= 0:
            raise ValueError("the CalDAV timeout must be positive")
        self.target = target
        self.timeout = timeout

    def _client(self) -> caldav.DAVClient:
        return caldav.DAVClient(
            url=self.target.url,
            username=self.target.username or None,
            password=self.target.password or None,
            timeout=self.timeout,
        )

    def put(self, uid: str, ics: bytes) -> None:
        """Create or replace the check-in's resource with ``ics``, byte for byte.

        Raises:
            PublishError: the server refused it or did not answer in time.
        """
        url = resource_url(self.target, uid)
        with self._client() as client:
            status = self._call("PUT", lambda: client.put(url, ics, {"Content-Type": CONTENT_TYPE}).status)
        if status not in (200, 201, 204):
            raise PublishError(f"PUT answered {status}")

    def delete(self, uid: str) -> None:
        """Remove the check-in's resource (one already gone is fine).

        Raises:
            PublishError: the server refused it or did not answer in time.
        """
        url = resource_url(self.target, uid)
        with self._client() as client:
            status = self._call("DELETE", lambda: client.delete(url).status)
        if status not in (200, 204, 404, 410):
            raise PublishError(f"DELETE answered {status}")

    @staticmethod
    def _call(verb: str, call):
        try:
            return call()
        except dav_error.DAVError as exc:
            raise PublishError(f"{verb} refused: {type(exc).__name__} {_status(exc)}".strip()) from None
        except OSError as exc:  # refused connections, timeouts, TLS (the HTTP client's errors are OSErrors)
            raise PublishError(f"{verb} failed: {type(exc).__name__}") from None


def _status(exc: dav_error.DAVError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return reason.split("\n", 1)[0][:80]
