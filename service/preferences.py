"""A member's preferences: how and when they hear about what the rules send them."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import g

from careloop import serialize
from careloop.access import Action
from careloop.models import Member, Notebook
from careloop.service import api_links
from careloop.service.auth import auth, before_the_body, reach_or_404
from careloop.service.schemas import PreferencesIn, PreferencesOut

bp = APIBlueprint("preferences", __name__, url_prefix="/v1", tag="Members")

DESCRIPTION = (
    "Rules decide who is told about an event; a member's preferences decide how and when. "
    "`channels`: per event category, the channels they may be told by — a channel left out is never "
    "used for that category (the delivery is `skipped`, reason `preference_off: …`). `quiet_hours`: "
    "non-urgent messages falling in this daily window (on the member's own clock, `timezone`) wait "
    "until it ends; urgent concerns and rules marked `bypass_quiet_hours` go at once. `mode: digest`: "
    "events of `digest_categories` come in one message a day at `digest_hour` (local), per channel; "
    "an empty digest is not sent."
)


def _answer(member: Member) -> dict:
    notebook = g.db.get(Notebook, member.notebook_id)
    return serialize.preferences(member, notebook.timezone)


@bp.get("/members/<id:member_id>/preferences")
@bp.auth_required(auth)
@bp.output(PreferencesOut, links=api_links.FROM_PREFERENCES)
@bp.doc(
    operation_id="getMemberPreferences",
    summary="How and when a member hears about events",
    description=DESCRIPTION + " How a member is reached is not for an integration key: it gets 404.",
    responses=[404],
)
def get_preferences(member_id: str):
    # how to reach someone, like their phone number: not for an integration key
    return _answer(reach_or_404(Member, member_id, Action.READ_CONTACTS, "member"))


@bp.put("/members/<id:member_id>/preferences")
@bp.auth_required(auth)
@before_the_body(Action.CHANGE_MEMBERS, Member, "member_id", "member")
@bp.input(PreferencesIn, arg_name="body")
@bp.output(PreferencesOut, links=api_links.FROM_PREFERENCES)
@bp.doc(
    operation_id="setMemberPreferences",
    summary="Set how and when a member hears about events (the whole set; `{}` restores the defaults)",
    description=DESCRIPTION + " Events routed from now on follow them; messages already planned keep "
    "their timing.",
    responses=[404],
)
def put_preferences(member_id: str, body: PreferencesIn):
    member = reach_or_404(Member, member_id, Action.CHANGE_MEMBERS, "member")
    member.preferences = body.model_dump(mode="json")
    g.db.commit()
    return _answer(member)
