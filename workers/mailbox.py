"""The RSVP mailbox: a periodic job that reads the organizer's mailbox for iTIP replies.

Every relay sweep (beside each ``careloop worker``, and in the embedded mode's idle time) asks
:func:`schedule` whether a poll is due: at most one every ``CARELOOP_IMAP_POLL_INTERVAL``
across all workers (a Redis key set with NX and that expiry marks the poll handed over). The
poll itself is the RQ job :func:`poll_mailbox` on the routing queue (in-process: run by the
sweep). It records each reply (``careloop.rsvp``), one transaction per message, then marks the
message read (``careloop.integrations.imap_replies``). A poll that runs twice does no harm: an
answer recorded again changes nothing.
"""

from __future__ import annotations

import logging
import time
import weakref

from careloop import rsvp
from careloop.db import session_scope
from careloop.integrations.imap_replies import MailboxAddress, MailboxError, poll
from careloop.rsvp import Reply, ReplyError
from careloop.runtime import Runtime
from careloop.workers.jobs import _runtime

log = logging.getLogger("careloop.workers.mailbox")

_next_poll: weakref.WeakKeyDictionary[Runtime, float] = weakref.WeakKeyDictionary()
"""In-process mode: when each runtime polls next (monotonic seconds)."""


def due_key(prefix: str) -> str:
    """The Redis key that marks a poll handed over, for the poll interval."""
    return f"{prefix}:mailbox-poll-due"


def schedule(runtime: Runtime) -> bool:
    """Hand a poll of the mailbox over when one is due (``CARELOOP_IMAP_URL`` set). Returns
    whether one was handed over (in-process: run)."""
    settings = runtime.settings
    if settings.imap_url is None:
        return False
    dispatcher = runtime.dispatcher
    interval = settings.imap_poll_interval
    if getattr(dispatcher, "mode", None) == "rq":
        marked = dispatcher.connection.set(
            due_key(settings.queue_prefix), "1", nx=True, px=max(int(interval * 1000), 1)
        )
        if not marked:
            return False
        dispatcher.route_queue.enqueue(
            poll_mailbox, job_timeout=runtime.job_timeout, result_ttl=3600, failure_ttl=7 * 24 * 3600
        )
        return True
    now = time.monotonic()
    if _next_poll.get(runtime, 0.0) > now:
        return False
    _next_poll[runtime] = now + interval
    poll_mailbox(runtime=runtime)
    return True


def poll_mailbox(runtime: Runtime | None = None) -> dict[str, int]:
    """RQ job: read the mailbox's unseen messages and record the replies in them. Returns how
    many messages were taken, flagged (not a reply careloop takes) and left for later."""
    runtime = _runtime(runtime)
    settings = runtime.settings
    if settings.imap_url is None:
        return {}
    address = MailboxAddress.from_url(settings.imap_url.get_secret_value())

    def take(replies: list[Reply]) -> None:
        with session_scope(runtime.database_url) as session:
            for reply in replies:
                checkin = rsvp.checkin_by_uid(session, reply.uid)
                if checkin is None:
                    raise ReplyError("UID", "names no check-in of careloop's")
                outcome = rsvp.record(session, checkin, reply, rsvp.Via.MAILBOX)
                log.info(
                    "RSVP from the mailbox: check-in %s member %s %s%s",
                    checkin.id,
                    outcome.member_id,
                    outcome.partstat,
                    "" if outcome.applied else " (older than the answer kept: ignored)",
                )

    try:
        result = poll(address, take, settings.provider_timeout)
    except MailboxError as exc:
        log.warning("RSVP mailbox: %s", exc)
        return {"taken": 0, "flagged": 0, "left": 0}
    if result.taken or result.flagged or result.left:
        log.info(
            "RSVP mailbox: %d messages taken, %d flagged, %d left for the next poll",
            result.taken,
            result.flagged,
            result.left,
        )
    return {"taken": result.taken, "flagged": result.flagged, "left": result.left}
