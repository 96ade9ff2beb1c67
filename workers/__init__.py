"""RQ jobs and what runs them: routing, delivery, the outbox relay, careloop's worker.

``build_runtime`` is the one place a :class:`~careloop.runtime.Runtime` is built — by the
app factory, the CLI and the worker alike — because it is where the job functions are
handed to the dispatcher (the core never imports them).
"""

from __future__ import annotations

from careloop.config.settings import Settings, get_settings
from careloop.dispatch import Jobs
from careloop.runtime import Runtime
from careloop.workers.caldav_jobs import publish_checkin
from careloop.workers.digests import send_digest
from careloop.workers.jobs import deliver, deliver_many, route_event, route_many
from careloop.workers.relay import relay_once
from careloop.workers.reminders import send_reminder

JOBS = Jobs(
    route=route_event,
    deliver=deliver,
    deliver_many=deliver_many,
    sweep=relay_once,
    digest=send_digest,
    route_many=route_many,
    publish=publish_checkin,
    reminder=send_reminder,
)
"""careloop's jobs, as the dispatcher hands them out."""


def build_runtime(settings: Settings | None = None) -> Runtime:
    """The runtime for ``settings`` (the environment's by default), with careloop's jobs."""
    return Runtime(settings or get_settings(), JOBS)
