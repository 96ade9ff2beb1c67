"""Publishing a notebook's check-ins to a CalDAV calendar: its settings and its outbox entries.

A notebook may name one CalDAV calendar collection (URL, username, password). From then on,
every check-in event of the notebook adds an outbox entry (:data:`CALDAV_TOPIC`, the
check-in's row id) in the event's own transaction; the relay hands entries to the publish
job (``careloop.workers.caldav_jobs``), which writes the check-in *as it is now* to the
calendar — PUT while it goes on, DELETE once cancelled whole — so publishing twice, or out of
order, leaves the calendar right. An entry is done only once the calendar took it: a failure
leaves it pending and the relay hands it over again (never lost).

No Flask, no RQ, no network: the CalDAV client is ``careloop.integrations.caldav_publish``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop.models import CaldavCalendar, Checkin, OutboxEntry

CALDAV_TOPIC = "caldav_publish"
"""Outbox topic of "this check-in must be written to its notebook's CalDAV calendar"."""


class CaldavSettingsError(ValueError):
    """Settings that cannot work; names the field (→ 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_url(url: str) -> str:
    """The calendar collection's URL, checked: http(s), a host, no credentials in it.

    Raises:
        CaldavSettingsError: naming ``url``.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CaldavSettingsError("url", "must be an http(s) URL of a CalDAV calendar collection")
    if parts.username or parts.password:
        raise CaldavSettingsError("url", "must not carry credentials; send username and password")
    if parts.fragment:
        raise CaldavSettingsError("url", "must not have a #fragment")
    text = url.strip()
    return text if text.endswith("/") else text + "/"


def configure(
    session: Session, notebook_id: str, *, url: str, username: str | None, password: str | None
) -> CaldavCalendar:
    """Set (or replace) the notebook's calendar and publish every check-in it has to it (not
    committed here). Cancelled ones are published too: a DELETE of nothing is no harm."""
    calendar = session.get(CaldavCalendar, notebook_id)
    if calendar is None:
        calendar = CaldavCalendar(notebook_id=notebook_id)
        session.add(calendar)
    calendar.url = check_url(url)
    calendar.username = username
    calendar.password = password
    calendar.last_error = None
    calendar.last_error_at = None
    session.flush()
    for checkin_pk in session.scalars(select(Checkin.id).where(Checkin.notebook_id == notebook_id)):
        session.add(OutboxEntry(topic=CALDAV_TOPIC, ref_id=str(checkin_pk)))
    return calendar


def remove(session: Session, notebook_id: str) -> bool:
    """Stop publishing (not committed here); what was published stays on the calendar.
    Returns whether there was a calendar."""
    calendar = session.get(CaldavCalendar, notebook_id)
    if calendar is None:
        return False
    session.delete(calendar)
    return True


def stage_publish(session: Session, notebook_id: str, checkin_id: str) -> None:
    """Promise, in the caller's transaction, to publish this check-in (when the notebook has a
    calendar). Dispatched by the relay's next sweep."""
    if session.get(CaldavCalendar, notebook_id) is None:
        return
    checkin_pk = session.scalar(
        select(Checkin.id).where(Checkin.notebook_id == notebook_id, Checkin.checkin_id == checkin_id)
    )
    if checkin_pk is not None:
        session.add(OutboxEntry(topic=CALDAV_TOPIC, ref_id=str(checkin_pk)))
