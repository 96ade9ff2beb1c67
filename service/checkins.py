"""A notebook's check-ins as the calendar sees them, and the RSVPs read back to them.

``GET /v1/notebooks/{id}/checkins/{checkin_id}``: the check-in (schedule, recurrence, the
occurrences changed alone) with each attendee's answer. ``POST …/replies``: an iTIP REPLY a
mail client sent to the ORGANIZER address, as ``text/calendar`` or as the whole email
(``message/rfc822``); ``careloop.rsvp`` checks and keeps it.
"""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import g, request
from sqlalchemy import select

from careloop import rsvp
from careloop.access import Action
from careloop.integrations.calendar_invite import read_reply
from careloop.integrations.mime import replies_in_email
from careloop.models import Checkin, Notebook
from careloop.rsvp import ReplyError
from careloop.service import api_links
from careloop.service.auth import auth, before_the_body, notebook_or_404, refuse
from careloop.service.schemas import REPLY_ICS_EXAMPLE, CheckinOut, RepliesOut

bp = APIBlueprint("checkins", __name__, url_prefix="/v1", tag="Check-ins")

REPLY_TYPES = ("text/calendar", "message/rfc822")
"""What a reply's body may be: the iTIP REPLY itself, or the whole email that carried it."""

REPLY_EMAIL_EXAMPLE = (
    "From: Dana Rivera <dana@example.org>\r\nTo: careloop@example.org\r\nSubject: Accepted: Monthly team "
    "check-in\r\nMIME-Version: 1.0\r\nContent-Type: text/calendar; method=REPLY; charset=UTF-8\r\n\r\n"
    + REPLY_ICS_EXAMPLE
)

REPLY_BODY = {
    "required": True,
    "description": "The REPLY a mail client sent to the invite's ORGANIZER: the iCalendar object "
    "(`text/calendar`), or the whole email (`message/rfc822`), whose first `text/calendar` part is read.",
    "content": {
        "text/calendar": {"schema": {"type": "string"}, "example": REPLY_ICS_EXAMPLE},
        "message/rfc822": {"schema": {"type": "string"}, "example": REPLY_EMAIL_EXAMPLE},
    },
}
"""The replies route's request body, as the OpenAPI document describes it (read raw)."""


def _checkin_or_404(notebook: Notebook, checkin_id: str) -> Checkin:
    checkin = g.db.scalars(
        select(Checkin).where(Checkin.notebook_id == notebook.id, Checkin.checkin_id == checkin_id)
    ).first()
    if checkin is None:
        refuse("check-in", notebook.id, "missing")
    return checkin


@bp.get("/notebooks/<id:notebook_id>/checkins/<checkin_id>")
@bp.auth_required(auth)
@bp.output(CheckinOut, links=api_links.FROM_CHECKIN)
@bp.doc(
    operation_id="getCheckin",
    summary="Get a check-in with each attendee's RSVP",
    description="The check-in as last scheduled or updated (its RRULE, the occurrences moved, "
    "cancelled or answered for alone) and each attendee's answer: NEEDS-ACTION until they answer "
    "by their mail client (a REPLY, posted here or read from the organizer's mailbox) or on their "
    "member page. `checkin_id` is your id for it, as sent in `checkin.scheduled`.",
    responses={404: "No such notebook or check-in"},
)
def get_checkin(notebook_id: str, checkin_id: str):
    notebook = notebook_or_404(notebook_id, Action.READ_EVENTS)
    return rsvp.view(g.db, _checkin_or_404(notebook, checkin_id))


@bp.post("/notebooks/<id:notebook_id>/checkins/<checkin_id>/replies")
@bp.auth_required(auth)
@before_the_body(Action.RECORD_EVENTS)
@bp.output(RepliesOut, links=api_links.FROM_REPLIES)
@bp.doc(
    operation_id="replyToCheckin",
    summary="Record an attendee's RSVP: an iTIP REPLY (text/calendar or the whole email)",
    description="Invites ask for an answer (RSVP=TRUE), so mail clients send an iTIP REPLY to the "
    "ORGANIZER address. Post it here as `text/calendar`, or the whole email as `message/rfc822`. "
    "METHOD must be REPLY, the UID the check-in's (and a RECURRENCE-ID one of its occurrences), "
    "the ATTENDEE an invited member's email address, PARTSTAT ACCEPTED, DECLINED or TENTATIVE. "
    "A reply older than the answer kept (lower SEQUENCE, or the same and an earlier DTSTAMP) "
    "changes nothing (`applied: false`). Later invites show each attendee's last answer.",
    responses={
        200: "The answers, and the check-in with every attendee's answer now",
        404: "No such notebook or check-in",
        409: "The check-in (or that occurrence) is cancelled",
        415: "The body is neither `text/calendar` nor `message/rfc822`",
        422: "Not a reply careloop can take: `fields` names the part (METHOD, UID, ATTENDEE, "
        "PARTSTAT, DTSTAMP, RECURRENCE-ID, body)",
    },
)
def reply_to_checkin(notebook_id: str, checkin_id: str):
    notebook = notebook_or_404(notebook_id, Action.RECORD_EVENTS)
    checkin = _checkin_or_404(notebook, checkin_id)
    kind = request.mimetype
    if kind not in REPLY_TYPES:
        abort(415, f"the request body must be text/calendar or message/rfc822, not {kind or 'untyped'}")
    body = request.get_data(cache=True)
    try:
        replies = read_reply(body) if kind == "text/calendar" else replies_in_email(body)
        outcomes = [rsvp.record(g.db, checkin, reply, rsvp.Via.API) for reply in replies]
    except ReplyError as refused:
        g.db.rollback()
        abort(
            refused.status,
            f"{refused.field}: {refused.message}",
            detail={"body": {refused.field: [refused.message]}},
        )
    g.db.commit()
    return {
        "results": [
            {
                "member_id": o.member_id,
                "recurrence_id": o.recurrence_id,
                "partstat": o.partstat,
                "applied": o.applied,
            }
            for o in outcomes
        ],
        "checkin": rsvp.view(g.db, checkin),
    }
