"""Member pages: ``/m/<token>`` shows one event as one care-team member may see it, no key.

Every text and email carries the recipient's own link (``careloop.links``). It opens a
server-rendered page: what happened, who recorded it, when (in the member's time zone, else
the notebook's), who else was told, and for a check-in its time, place and attendees — each
detail only as far as the member's role may see it (``careloop.policy``). A tampered,
expired or revoked link, or one of a member since deactivated, gets the same plain "this link
no longer works" page (404), which says nothing about why or about whom.

Tokens never reach a log: request lines are redacted (``careloop.service.redaction``), this
module logs ids only, and the pages send no Referer and are never stored (``pages``).

An alert whose event waits for an acknowledgement (``careloop.escalation``) has an "I have
seen this" button: a form posted to ``/m/<token>/ack`` with the page's CSRF token (Flask-WTF's,
in the page session, as the timeline's forms have it), which acknowledges the delivery as the
member and stops the event's escalation; the page then shows who acknowledged it and when.

A check-in's page shows each attendee's RSVP and offers the member Accept / Decline (for the
occurrence, when the event is about one occurrence of a series): a form posted to
``/m/<token>/rsvp`` with the same CSRF token, recorded as the answer a mail client's REPLY would
be (``careloop.rsvp``), then back to the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, validate_csrf
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from wtforms import ValidationError

from careloop import rsvp
from careloop.audit import ActorType
from careloop.escalation import AckVia, acknowledge
from careloop.events import CHECKIN_TYPES, EventType
from careloop.links import LinkRefused
from careloop.messages import (
    detail_lines,
    event_label,
    first_name,
    headline,
    local_date,
    local_span,
    local_time,
)
from careloop.models import Checkin, Delivery, Escalation, Event, Member, Notebook
from careloop.service.audit_trail import trail
from careloop.service.pages import private_page
from careloop.vocabulary import ChannelKind, DeliveryStatus

log = logging.getLogger("careloop.service.member_pages")

bp = Blueprint("member_pages", __name__, url_prefix="/m")

CHANNEL_WORDS = {ChannelKind.SMS: "text", ChannelKind.EMAIL: "email", ChannelKind.CALENDAR: "calendar invite"}
"""How a page names the channels a member was told by."""


# --- The place the audit log plugs in (the per-IP rate limit is service.limits') ---------------


def record_view(
    outcome: str,
    *,
    member_id: str | None = None,
    event_id: str | None = None,
    notebook_id: str | None = None,
    action: str = "member_link.view",
) -> None:
    """Record a member-link view in the audit log: who (the member, when known), what (the
    event), whose (the notebook), from where and how it ended (the page's status, written
    after the page by ``careloop.service.audit_trail``); the one call site for every view and
    every refusal. Never the token."""
    log.info("member link %s: member=%s event=%s", outcome, member_id or "-", event_id or "-")
    seen = trail()
    seen.action = action
    if member_id:
        seen.actor_type, seen.actor_id = ActorType.MEMBER, member_id
    seen.target_id = event_id
    seen.notebook_ids = [notebook_id] if notebook_id else []
    fine = outcome in ("viewed", "acknowledged", "answered")
    seen.reason = None if fine else outcome.removeprefix("refused: ")


# --- Pages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    name: str
    role: str
    answer: str | None = None


ANSWER_WORDS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "maybe"}
"""How a page says an attendee's RSVP (nothing until they answer)."""

PAGE_ANSWERS = {"accept": "ACCEPTED", "decline": "DECLINED"}
"""The member page's buttons and the PARTSTAT each one sets."""


def _person(member: Member | None) -> Person | None:
    return Person(member.name, member.role.replace("_", " ")) if member is not None else None


def _gone():
    return private_page(current_app.make_response((render_template("member/gone.html"), 404)))


@bp.get("/")
@bp.get("/<path:_rest>")
def not_a_link(_rest: str = ""):
    """Anything under /m/ that is not one token: the same page as a dead link."""
    record_view("refused: not a link")
    return _gone()


@dataclass(frozen=True)
class Opened:
    """What a working member link opens: its delivery, member, event and notebook."""

    delivery: Delivery
    member: Member
    event: Event
    notebook: Notebook
    issued_at: datetime


def _open(token: str, action: str, outcome: str) -> Opened | None:
    """Read a member link; None (after recording why) when it does not work."""
    runtime = current_app.extensions["careloop"].runtime
    try:
        claim = runtime.links.read(token)
    except LinkRefused as refused:
        record_view(f"refused: {refused.reason}", action=action)
        return None
    delivery = g.db.get(Delivery, claim.delivery_id)
    member = g.db.get(Member, delivery.member_id) if delivery is not None else None
    if delivery is None or member is None:
        record_view("refused: no such delivery or member", action=action)
        return None
    nb_id = member.notebook_id
    if not member.active or member.link_generation != claim.generation:
        ids = {"member_id": member.id, "event_id": delivery.event_id, "notebook_id": nb_id}
        record_view("refused: revoked", **ids, action=action)
        return None
    event = g.db.get(Event, delivery.event_id)
    notebook = g.db.get(Notebook, delivery.notebook_id)
    if event is None or notebook is None:
        record_view("refused: no such event", member_id=member.id, notebook_id=nb_id, action=action)
        return None
    record_view(outcome, member_id=member.id, event_id=event.id, notebook_id=notebook.id, action=action)
    return Opened(delivery, member, event, notebook, claim.issued_at)


@bp.get("/<token>")
def open_link(token: str):
    runtime = current_app.extensions["careloop"].runtime
    opened = _open(token, "member_link.view", "viewed")
    if opened is None:
        return _gone()
    page = _event_page(runtime, opened.event, opened.notebook, opened.member)
    page["expires"] = local_date(runtime.links.expires_at(opened.issued_at), page["zone"])
    page["acknowledgement"] = _acknowledgement(opened, page["zone"])
    page["ack_url"] = url_for(".acknowledge_link", token=token)
    page["token"] = token
    return private_page(current_app.make_response(render_template("member/event.html", **page)))


@bp.post("/<token>/ack")
def acknowledge_link(token: str):
    """The "I have seen this" button: acknowledges this delivery as its member (idempotent),
    then shows the page again."""
    _check_form()  # first: a missing or wrong token is a CSRFError, a 400 page (below)
    opened = _open(token, "member_link.acknowledge", "acknowledged")
    if opened is None:
        return _gone()
    acknowledge(g.db, opened.delivery, opened.member.id, AckVia.MEMBER_PAGE)
    return private_page(redirect(url_for(".open_link", token=token), code=303))


@bp.post("/<token>/rsvp")
def answer_checkin(token: str):
    """Accept / Decline on a check-in's page: the member's RSVP, then back to the page."""
    _check_form()  # first: a missing or wrong token is a CSRFError, a 400 page (below)
    opened = _open(token, "member_link.rsvp", "answered")
    if opened is None:
        return _gone()
    member, event, nb_id = opened.member, opened.event, opened.notebook.id
    partstat = PAGE_ANSWERS.get(request.form.get("answer", ""))
    checkin = _current_checkin(event)
    if partstat is None or checkin is None or event.type not in CHECKIN_TYPES:
        record_view("refused: no answer to give", member_id=member.id, event_id=event.id, notebook_id=nb_id)
        return _broken(400)
    occurrence = ((event.context or {}).get("checkin") or {}).get("occurrence") or {}
    try:
        outcome = rsvp.answer_on_page(g.db, checkin, member, partstat, occurrence.get("recurrence_id"))
    except rsvp.ReplyError as refused:
        g.db.rollback()
        log.info("member page answer refused: member=%s event=%s (%s)", member.id, event.id, refused.field)
        record_view("refused: cannot answer", member_id=member.id, event_id=event.id, notebook_id=nb_id)
        return _broken(409)
    g.db.commit()
    log.info("member page answer: member=%s event=%s %s", member.id, event.id, outcome.partstat)
    return private_page(redirect(url_for(".open_link", token=token), code=303))


def _broken(status: int):
    page = render_template("member/broken.html", status=status)
    return private_page(current_app.make_response((page, status)))


def _current_checkin(event: Event) -> Checkin | None:
    checkin_id = (event.data or {}).get("checkin_id")
    if not checkin_id:
        return None
    return g.db.scalars(
        select(Checkin).where(Checkin.notebook_id == event.notebook_id, Checkin.checkin_id == checkin_id)
    ).first()


def _check_form() -> None:
    """The form's CSRF token must be the one this browser's session holds (Flask-WTF). Not
    Flask-WTF's Referer check: a member page sends no Referer (its address is a token), so a
    browser's ``Sec-Fetch-Site`` says instead where the post came from."""
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError as exc:
        raise CSRFError(exc.args[0]) from None
    if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
        raise CSRFError("the form was not posted from this site")


def _acknowledgement(opened: Opened, zone: str) -> dict | None:
    """The page's acknowledgement section: None unless the event waits (or waited) for one."""
    waits = g.db.get(Escalation, opened.event.id)
    if waits is None:
        return None
    delivery = opened.delivery
    by = None
    if waits.acknowledged_at is not None and waits.acknowledged_by != opened.member.id:
        other = g.db.get(Member, waits.acknowledged_by) if waits.acknowledged_by else None
        by = other.name if other is not None else "a member of the care team"
    return {
        "yours": local_time(delivery.acknowledged_at, zone) if delivery.acknowledged_at else None,
        "by": by,
        "at": local_time(waits.acknowledged_at, zone) if waits.acknowledged_at else None,
    }


def _event_page(runtime, event: Event, notebook: Notebook, member: Member) -> dict:
    """What the event page shows this member: only what their role may see."""
    zone = member.timezone or notebook.timezone
    author = g.db.get(Member, event.author_member_id) if event.author_member_id else None
    checkin = None
    details: list[tuple[str, str]] = []
    if event.type in CHECKIN_TYPES:
        checkin = _checkin(runtime, event, member, zone)
        shown = checkin is not None
    else:
        fields = runtime.policy.visible_fields(member.role, event.type, event.data)
        details = detail_lines(event.type, event.data, fields, zone)
        shown = bool(fields)
    return {
        "headline": headline(event.type, event.data, notebook.child_name),
        "label": event_label(event.type, event.data),
        "child": first_name(notebook.child_name),
        "member": _person(member),
        "zone": zone,
        "author": _person(author),
        "occurred": local_time(event.occurred_at, zone),
        "occurred_iso": event.occurred_at.isoformat(),
        "details": details,
        "checkin": checkin,
        "withheld": not shown,
        "told": _others_told(event, member),
    }


def _checkin(runtime, event: Event, member: Member, zone: str) -> dict | None:
    """The check-in as last scheduled (a cancellation shows what was cancelled), with the
    fields the member's role may see of it; None when it may see none."""
    snapshot = dict((event.context or {}).get("checkin") or {})
    if not snapshot:
        return None
    occurrence = snapshot.get("occurrence")
    if occurrence:  # an event about one occurrence of a series shows that occurrence
        snapshot.update(
            start=occurrence["start"],
            end=occurrence["end"],
            title=occurrence.get("title") or snapshot.get("title"),
            location=occurrence.get("location") or snapshot.get("location"),
        )
    # A cancellation carries only the id; the member may see of it what they could of an update.
    as_type = EventType.CHECKIN_UPDATED if event.type == EventType.CHECKIN_CANCELLED else event.type
    fields = set(runtime.policy.visible_fields(member.role, as_type, snapshot))
    if not fields:
        return None
    attendee_ids = list(snapshot.get("attendees") or [])
    current = _current_checkin(event)
    answers = _answers(current, occurrence.get("recurrence_id") if occurrence else None)
    attendees = []
    if "attendees" in fields and attendee_ids:
        by_id = {m.id: m for m in g.db.query(Member).filter(Member.id.in_(attendee_ids))}
        attendees = [
            Person(by_id[i].name, by_id[i].role.replace("_", " "), ANSWER_WORDS.get(answers.get(i, "")))
            for i in attendee_ids
            if i in by_id
        ]
    when = None
    if {"start", "end"} <= fields and snapshot.get("start") and snapshot.get("end"):
        start, end = (datetime.fromisoformat(snapshot[k]) for k in ("start", "end"))
        when = local_span(start, end, zone)
    return {
        "title": snapshot.get("title") if "title" in fields else None,
        "when": when,
        "where": snapshot.get("location") if "location" in fields else None,
        "attendees": attendees,
        "invited": member.id in attendee_ids,
        "cancelled": event.type == EventType.CHECKIN_CANCELLED,
        # Accept / Decline while the member is invited to the check-in as it is now.
        "can_answer": current is not None
        and not current.cancelled
        and event.type != EventType.CHECKIN_CANCELLED
        and not (occurrence and occurrence.get("cancelled"))
        and member.id in ((current.details or {}).get("attendees") or ()),
        "answer": ANSWER_WORDS.get(answers.get(member.id, "")),
        "about_occurrence": bool(occurrence),
    }


def _answers(checkin: Checkin | None, occurrence: str | None) -> dict[str, str]:
    """Each attendee's RSVP now: member id → PARTSTAT (for the occurrence, when one is named)."""
    if checkin is None or checkin.cancelled:
        return {}
    kept = rsvp.answers(g.db, checkin)
    found = {m: a.partstat for m, a in kept.get("", {}).items()}
    if occurrence:
        found.update({m: a.partstat for m, a in kept.get(occurrence, {}).items()})
    return found


def _others_told(event: Event, member: Member) -> list[tuple[Person, str]]:
    """Everyone else this event was sent to (or is on its way to), with how, in team order."""
    rows = g.db.query(Delivery.member_id, Delivery.channel).filter(
        Delivery.event_id == event.id,
        Delivery.member_id != member.id,
        Delivery.status != DeliveryStatus.SKIPPED,
    )
    channels: dict[str, set[str]] = {}
    for member_id, channel in rows:
        channels.setdefault(member_id, set()).add(channel)
    people = g.db.query(Member).filter(Member.id.in_(list(channels))).order_by(Member.created_at, Member.id)
    order = list(ChannelKind)
    return [
        (_person(person), " and ".join(CHANNEL_WORDS[c] for c in order if c in channels[person.id]))
        for person in people
    ]


@bp.errorhandler(Exception)
def _page_error(error: Exception):
    """A page never answers with the API's JSON error nor says more than it must: an HTTP
    error (a rate limit's 429, say) keeps its status and headers; a bug is a plain 500."""
    if isinstance(error, HTTPException):
        answer = error.get_response()
        page = current_app.make_response(
            (render_template("member/broken.html", status=error.code), error.code)
        )
        for name, value in answer.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                page.headers[name] = value
        return private_page(page)
    log.exception("member page failed")
    return private_page(current_app.make_response((render_template("member/broken.html", status=500), 500)))
