"""The notebook timeline (``/timeline``) and the admin view (``/timeline/admin``): pages for
care coordinators and clinic IT, answering "who was told, how, and did it arrive".

Server-rendered (Jinja, no script): a notebook's events newest first, each with every
delivery — who, by which channel, and where it stands (queued, sending, sent, delivered, not
delivered or failed with the reason, skipped with the reason) — filtered by a plain GET form
(type, member, status) and paged by a keyset cursor. A failed delivery has a "Retry" button:
a POST form (CSRF-protected) that runs the API's own retry
(``careloop.service.deliveries.send_again``). Times are in the notebook's time zone, and the
page says which.

A notebook key's session sees its notebook; the admin key's sees every notebook (a chooser)
and the admin view: failed deliveries across notebooks and the queues' depths.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from apiflask import APIBlueprint
from flask import abort, current_app, flash, g, redirect, request, url_for
from sqlalchemy import and_, func, or_, select

from careloop.access import Action
from careloop.events import EventType
from careloop.messages import event_label, local_time
from careloop.models import Delivery, Event, Member, Notebook
from careloop.queues import queue_roles
from careloop.service.deliveries import send_again
from careloop.service.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor
from careloop.service.signin import page, page_principal, protect_forms, signin_required
from careloop.vocabulary import RETRYABLE_STATUSES, ChannelKind, DeliveryStatus

log = logging.getLogger("careloop.service.timeline")

bp = APIBlueprint("timeline", __name__, url_prefix="/timeline", enable_openapi=False)  # pages, not the API

PAGE_SIZE = 20
"""Events per timeline page."""

ADMIN_FAILED_LIMIT = 100
"""Failed deliveries the admin view lists (newest first)."""

NOTEBOOK_CHOICES_LIMIT = 500
"""Notebooks the admin's chooser offers."""

CHANNEL_WORDS = {
    ChannelKind.SMS: "Text (SMS)",
    ChannelKind.EMAIL: "Email",
    ChannelKind.CALENDAR: "Calendar invite",
}
"""How the timeline names each channel."""

STATUS_WORDS = {
    DeliveryStatus.QUEUED: "Queued",
    DeliveryStatus.SENDING: "Sending",
    DeliveryStatus.SENT: "Sent",
    DeliveryStatus.DELIVERED: "Delivered",
    DeliveryStatus.UNDELIVERED: "Not delivered",
    DeliveryStatus.FAILED: "Failed",
    DeliveryStatus.SKIPPED: "Skipped",
}
"""How the timeline names each delivery status (every status has a word: checked by a test)."""

_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
_BACK = re.compile(r"/timeline(/admin)?(\?[A-Za-z0-9_.%=&+-]*)?")
"""Where a retry form may send the browser back to: a timeline page of this site, no more."""


@dataclass(frozen=True)
class Row:
    """One delivery as the timeline shows it."""

    id: str
    who: str
    channel: str
    status: str
    status_word: str
    reason: str | None
    when: str | None
    when_iso: str | None
    attempts: int
    retryable: bool


@dataclass(frozen=True)
class Item:
    """One event with its deliveries."""

    id: str
    label: str
    when: str
    when_iso: str
    author: str
    rows: list[Row]


def _person(member: Member | None) -> str:
    if member is None:
        return "a former member"
    return f"{member.name} ({member.role.replace('_', ' ')})"


def _row(d: Delivery, members: dict[str, Member], zone: str) -> Row:
    moment = d.delivered_at or d.sent_at or d.updated_at
    status = DeliveryStatus(d.status)
    reason = (
        d.error
        if status in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED, DeliveryStatus.SKIPPED)
        else None
    )
    if status == DeliveryStatus.QUEUED and d.error:
        reason = f"will try again: {d.error}"  # a transient failure, retried by careloop
    return Row(
        id=d.id,
        who=_person(members.get(d.member_id)),
        channel=CHANNEL_WORDS.get(d.channel, d.channel),
        status=status.value,
        status_word=STATUS_WORDS[status],
        reason=reason,
        when=local_time(moment, zone) if moment else None,
        when_iso=moment.isoformat() if moment else None,
        attempts=d.attempts,
        retryable=status in RETRYABLE_STATUSES,
    )


def _choice(name: str, allowed) -> str:
    """A filter's value from the query string; anything the form does not offer means "all"."""
    value = request.args.get(name, "")
    return value if value in allowed else ""


def _notebook_for(who) -> tuple[Notebook | None, list[Notebook]]:
    """The notebook to show, and (for the admin) the notebooks to choose from."""
    reachable = who.notebooks_for(Action.READ_EVENTS)  # None: every notebook (the admin)
    if reachable is not None and len(reachable) <= 1:
        return (g.db.get(Notebook, next(iter(reachable))) if reachable else None), []
    query = select(Notebook).order_by(Notebook.name, Notebook.id).limit(NOTEBOOK_CHOICES_LIMIT)
    if reachable is not None:  # a clinic key: the notebooks it was given
        query = query.where(Notebook.id.in_(reachable))
    choices = list(g.db.scalars(query))
    wanted = request.args.get("notebook", "")
    if wanted and _ID.fullmatch(wanted) and (reachable is None or wanted in reachable):
        return g.db.get(Notebook, wanted), choices
    return (choices[0] if choices else None), choices


@bp.get("")
@signin_required
def timeline():
    who = page_principal()
    notebook, choices = _notebook_for(who)
    if notebook is None:
        if who.admin and not choices:
            return page("timeline/message.html", title="No notebooks yet", admin=True,
                        message="There is no notebook to show.")  # fmt: skip
        abort(404)
    zone = notebook.timezone
    members = {
        m.id: m
        for m in g.db.scalars(
            select(Member).where(Member.notebook_id == notebook.id).order_by(Member.created_at, Member.id)
        )
    }
    chosen = {
        "type": _choice("type", [t.value for t in EventType]),
        "member": _choice("member", members),
        "status": _choice("status", [s.value for s in DeliveryStatus]),
    }
    cursor = request.args.get("before", "")
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        cursor = ""

    def matching(stmt):
        if chosen["member"]:
            stmt = stmt.where(Delivery.member_id == chosen["member"])
        if chosen["status"]:
            stmt = stmt.where(Delivery.status == chosen["status"])
        return stmt

    stmt = select(Event).where(Event.notebook_id == notebook.id)
    if chosen["type"]:
        stmt = stmt.where(Event.type == chosen["type"])
    if chosen["member"] or chosen["status"]:
        stmt = stmt.where(
            Event.id.in_(matching(select(Delivery.event_id).where(Delivery.notebook_id == notebook.id)))
        )
    if cursor:
        when, ident = decode_cursor(cursor)
        stmt = stmt.where(or_(Event.occurred_at < when, and_(Event.occurred_at == when, Event.id < ident)))
    events = list(g.db.scalars(stmt.order_by(Event.occurred_at.desc(), Event.id.desc()).limit(PAGE_SIZE + 1)))
    older = None
    if len(events) > PAGE_SIZE:
        events = events[:PAGE_SIZE]
        older = encode_cursor(events[-1].occurred_at, events[-1].id)

    by_event: dict[str, list[Delivery]] = {}
    if events:
        team_order = {member_id: i for i, member_id in enumerate(members)}
        rows = g.db.scalars(matching(select(Delivery).where(Delivery.event_id.in_([e.id for e in events]))))
        channel_order = {c.value: i for i, c in enumerate(ChannelKind)}

        def order(d: Delivery) -> tuple[int, int]:
            return team_order.get(d.member_id, len(team_order)), channel_order.get(
                d.channel, len(channel_order)
            )

        for d in sorted(rows, key=order):
            by_event.setdefault(d.event_id, []).append(d)
    items = [
        Item(
            id=e.id,
            label=_sentence(event_label(e.type, e.data)),
            when=local_time(e.occurred_at, zone),
            when_iso=e.occurred_at.isoformat(),
            author=_person(members.get(e.author_member_id)) if e.author_member_id else "a connected system",
            rows=[_row(d, members, zone) for d in by_event.get(e.id, [])],
        )
        for e in events
    ]
    base_args = {k: v for k, v in chosen.items() if v}
    if choices:
        base_args["notebook"] = notebook.id
    return page(
        "timeline/timeline.html",
        notebook=notebook,
        zone=zone,
        items=items,
        admin=who.admin,
        choices=choices,
        members=[(m.id, _person(m)) for m in members.values()],
        types=[(t.value, _sentence(event_label(t.value, {}))) for t in EventType],
        statuses=[(s.value, STATUS_WORDS[s]) for s in DeliveryStatus],
        chosen=chosen,
        filtered=bool(chosen["type"] or chosen["member"] or chosen["status"]),
        older_url=url_for("timeline.timeline", **base_args, before=older) if older else None,
        newest_url=url_for("timeline.timeline", **base_args) if cursor else None,
        here=request.full_path.rstrip("?"),
    )


def _sentence(label: str) -> str:
    """ "a medication update" → "Medication update"."""
    for article in ("an ", "a "):
        if label.startswith(article):
            label = label[len(article) :]
            break
    return label[:1].upper() + label[1:]


@bp.post("/deliveries/<id:delivery_id>/retry")
@signin_required
def retry(delivery_id: str):
    who = page_principal()
    delivery = g.db.get(Delivery, delivery_id)
    if delivery is None or not who.may(Action.RETRY_DELIVERIES, delivery.notebook_id):
        abort(404)
    member = g.db.get(Member, delivery.member_id)
    what = f"The {CHANNEL_WORDS.get(delivery.channel, delivery.channel).lower()} to {_person(member)}"
    if delivery.status == DeliveryStatus.SKIPPED:
        flash(f"{what} was skipped ({delivery.error}): fix the member's details and record the event again.")
    elif delivery.status not in RETRYABLE_STATUSES:
        flash(f"{what} is already on its way or sent.")
    else:
        send_again(delivery)
        log.info("delivery %s retried from the timeline", delivery.id)
        flash(f"{what} is queued to be sent again.")
    back = request.form.get("back", "")
    if not _BACK.fullmatch(back):
        back = url_for("timeline.timeline")
    return redirect(f"{back}#{delivery.event_id}", 303)


# --- The admin view --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    name: str
    waiting_in_database: int
    queued: int | None = None
    running: int | None = None
    scheduled: int | None = None
    failed_jobs: int | None = None


def _queue_rows() -> tuple[list[QueueRow], str | None]:
    """Each queue's depth: deliveries waiting in the database, and (RQ) the jobs in its
    registries. Returns the rows and, when RQ cannot be asked, why."""
    runtime = current_app.extensions["careloop"].runtime
    waiting = dict(
        g.db.execute(
            select(Delivery.queue, func.count())
            .where(Delivery.status == DeliveryStatus.QUEUED)
            .group_by(Delivery.queue)
        ).all()
    )
    roles = queue_roles()
    dispatcher = runtime.dispatcher
    if dispatcher.mode != "rq":
        return [QueueRow(role, waiting.get(role, 0)) for role in roles], None
    rows = []
    try:
        for role in roles:
            queue = dispatcher.queue(role)
            rows.append(
                QueueRow(
                    name=role,
                    waiting_in_database=waiting.get(role, 0),
                    queued=queue.count,
                    running=queue.started_job_registry.count,
                    scheduled=queue.scheduled_job_registry.count,
                    failed_jobs=queue.failed_job_registry.count,
                )
            )
    except Exception as exc:  # Redis is down: the page still shows what the database knows
        log.warning("queue depths unavailable: %s", type(exc).__name__)
        return [QueueRow(role, waiting.get(role, 0)) for role in roles], "Redis cannot be reached right now."
    return rows, None


@bp.get("/admin")
@signin_required
def admin():
    who = page_principal()
    if not who.admin:
        abort(403)
    failed = list(
        g.db.scalars(
            select(Delivery)
            .where(Delivery.status.in_(RETRYABLE_STATUSES))
            .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
            .limit(ADMIN_FAILED_LIMIT + 1)
        )
    )
    more = len(failed) > ADMIN_FAILED_LIMIT
    failed = failed[:ADMIN_FAILED_LIMIT]
    notebooks = {
        n.id: n
        for n in g.db.scalars(select(Notebook).where(Notebook.id.in_({d.notebook_id for d in failed})))
    }
    members = {
        m.id: m for m in g.db.scalars(select(Member).where(Member.id.in_({d.member_id for d in failed})))
    }
    events = {e.id: e for e in g.db.scalars(select(Event).where(Event.id.in_({d.event_id for d in failed})))}
    rows = [
        (
            notebooks.get(d.notebook_id),
            _sentence(event_label(events[d.event_id].type, events[d.event_id].data))
            if d.event_id in events
            else "",
            _row(d, members, "UTC"),
        )
        for d in failed
    ]
    queues, queue_problem = _queue_rows()
    return page(
        "timeline/admin.html",
        admin=True,
        rows=rows,
        more=more,
        queues=queues,
        queue_problem=queue_problem,
        embedded=current_app.extensions["careloop"].runtime.dispatcher.mode != "rq",
        here=url_for("timeline.admin"),
        now=local_time(datetime.now().astimezone(), "UTC"),
    )


protect_forms(bp)
