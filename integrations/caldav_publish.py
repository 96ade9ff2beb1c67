"""CalDAV: a check-in written to (or removed from) a calendar collection, with the ``caldav``
client library (RFC 4791).

One resource per check-in, at ``{collection}/{UID}.ics``: the whole check-in as a calendar
keeps it (:func:`careloop.integrations.calendar_invite.build_calendar`), PUT as built — the
library's own SEQUENCE bump and clean-ups are off, so the calendar holds exactly careloop's
UIDs and SEQUENCEs — or DELETEd once the check-in is cancelled (already gone counts as done).
Every request gives up after ``timeout`` seconds; nothing here retries (the publish job's
outbox entry does). No Flask, no RQ. Errors never carry the password or the calendar's body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

import caldav
from caldav.lib import error as dav_error

from careloop.integrations.base import DEFAULT_TIMEOUT


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
            enable_rfc6764=False,  # the URL is the collection's: no DNS discovery
            rate_limit_handle=False,  # a 429 is a failure retried later, never a sleep here
        )

    def put(self, uid: str, ics: bytes) -> None:
        """Create or replace the check-in's resource with ``ics``.

        Raises:
            PublishError: the server refused it or did not answer in time.
        """
        with self._client() as client:
            calendar = client.calendar(url=self.target.url)
            resource = caldav.Event(client=client, url=resource_url(self.target, uid), parent=calendar)
            self._call("PUT", lambda: resource.save(raw_data=ics))

    def delete(self, uid: str) -> None:
        """Remove the check-in's resource (one already gone is fine).

        Raises:
            PublishError: the server refused it or did not answer in time.
        """
        with self._client() as client:
            calendar = client.calendar(url=self.target.url)
            resource = caldav.Event(client=client, url=resource_url(self.target, uid), parent=calendar)
            self._call("DELETE", resource.delete)

    @staticmethod
    def _call(verb: str, call) -> None:
        try:
            call()
        except dav_error.DAVError as exc:
            raise PublishError(f"{verb} refused: {type(exc).__name__} {_status(exc)}".strip()) from None
        except OSError as exc:  # connection refused, timeouts, TLS (niquests' errors are OSErrors)
            raise PublishError(f"{verb} failed: {type(exc).__name__}") from None


def _status(exc: dav_error.DAVError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return reason.split("\n", 1)[0][:80]
