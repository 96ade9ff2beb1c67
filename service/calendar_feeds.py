"""Members' calendar feeds (careloop.calendar_feeds): the URL shown with the member, its
rotation, and the feed itself at ``/calendar/<token>.ics`` (no key: the URL is the secret).

A URL that opens nothing (never made, rotated away, a member deactivated) gets the same
plain 404. Every read and refusal is in the audit log like a member-link view; the token
never is (request lines are redacted, ``careloop.service.redaction``).
"""

from __future__ import annotations

import logging

from apiflask import APIBlueprint
from flask import Blueprint, current_app, g

from careloop import calendar_feeds, serialize
from careloop.access import Action
from careloop.audit import ActorType
from careloop.integrations.calendar_invite import build_calendar
from careloop.messages import first_name
from careloop.models import Member, utcnow
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import auth, principal, reach_or_404
from careloop.service.pages import private_page
from careloop.service.schemas import CalendarFeedOut, MemberDetailOut

log = logging.getLogger("careloop.service.calendar_feeds")

bp = APIBlueprint("calendar_feed_api", __name__, url_prefix="/v1", tag="Members")
feed_bp = Blueprint("calendar_feeds", __name__, url_prefix=calendar_feeds.FEED_PATH.rstrip("/"))

FEED_DESCRIPTION = (
    "`calendar_feed_url` is the member's own iCalendar feed (`text/calendar`): every check-in they "
    "are an attendee of, with the invites' UIDs, its recurrence, and occurrences or check-ins "
    "cancelled marked STATUS:CANCELLED. Anyone with the URL can read it, so only the family and "
    "admin keys are shown it; rotating it makes the old URL answer 404."
)


def _feed_url(member: Member) -> str:
    runtime = current_app.extensions["careloop"].runtime
    token = calendar_feeds.current_token(g.db, runtime.secret, member)
    return calendar_feeds.feed_url(runtime.settings.public_url, token)


@bp.get("/members/<id:member_id>")
@bp.auth_required(auth)
@bp.output(MemberDetailOut, links=api_links.FROM_MEMBER)
@bp.doc(
    operation_id="getMember",
    summary="Get a care-team member (with their calendar feed URL for the family and admin keys)",
    description=FEED_DESCRIPTION + " An integration key, which never sees contact details, gets 404.",
    responses=[404],
)
def get_member(member_id: str):
    member = reach_or_404(Member, member_id, Action.READ_CONTACTS, "member")
    url = None
    if principal().may(Action.CHANGE_MEMBERS, member.notebook_id):
        url = _feed_url(member)
        g.db.commit()  # the URL's hash, stored the first time it is shown
    return {**serialize.member(member), "calendar_feed_url": url}


@bp.post("/members/<id:member_id>/calendar_feed/rotate")
@bp.auth_required(auth)
@bp.output(CalendarFeedOut, links=api_links.FROM_CALENDAR_FEED)
@bp.doc(
    operation_id="rotateCalendarFeed",
    summary="Revoke a member's calendar feed URL and make a new one",
    description=FEED_DESCRIPTION,
    responses=[404],
)
def rotate_feed(member_id: str):
    member = reach_or_404(Member, member_id, Action.CHANGE_MEMBERS, "member")
    runtime = current_app.extensions["careloop"].runtime
    token = calendar_feeds.rotate(g.db, runtime.secret, member)
    g.db.commit()
    return {
        "member_id": member.id,
        "calendar_feed_url": calendar_feeds.feed_url(runtime.settings.public_url, token),
        "rotated_at": serialize.iso(utcnow()),
    }


def record_read(outcome: str, member: Member | None = None) -> None:
    """Record a feed read (or refusal) in the audit log, as member-link views are. Never the token."""
    log.info("calendar feed %s: member=%s", outcome, member.id if member else "-")
    seen = trail()
    seen.action = "calendar_feed.read"
    if member is not None:
        seen.actor_type, seen.actor_id = ActorType.MEMBER, member.id
        seen.target_id = member.id
        seen.notebook_ids = [member.notebook_id]
    seen.reason = None if outcome == "read" else outcome.removeprefix("refused: ")


@feed_bp.get("/<token>.ics")
def read_feed(token: str):
    member = calendar_feeds.find_member(g.db, token)
    if member is None:
        record_read("refused: no such feed")
        response = current_app.make_response(("This calendar feed does not exist.\n", 404))
        response.mimetype = "text/plain"
        return private_page(response)
    notebook, entries = calendar_feeds.member_entries(g.db, member)
    body = build_calendar(entries, name=f"{first_name(notebook.child_name)}'s care team (careloop)")
    record_read("read", member)
    response = current_app.make_response(body)
    response.headers["Content-Type"] = "text/calendar; charset=utf-8"
    response.headers["Content-Disposition"] = 'inline; filename="careloop.ics"'
    return private_page(response)
