"""A notebook's CalDAV calendar: where its check-ins are published (careloop.calendar_publishing).

The family and admin keys set, read and remove it. The password is kept for publishing and
never comes back: the answer only says whether one is kept.
"""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import current_app, g
from sqlalchemy import func, select

from careloop import calendar_publishing as publishing
from careloop.access import Action
from careloop.integrations.webhooks_out import DestinationRefused, check_destination
from careloop.models import CaldavCalendar, Checkin, OutboxEntry, utcnow
from careloop.serialize import iso
from careloop.service import api_links
from careloop.service.auth import auth, before_the_body, notebook_or_404
from careloop.service.schemas import CaldavIn, CaldavOut

bp = APIBlueprint("caldav", __name__, url_prefix="/v1", tag="Notebooks")

DESCRIPTION = (
    "Every check-in of the notebook is written to this CalDAV calendar collection as one resource "
    "(`{url}{UID}.ics`, the invites' UID): created when scheduled, rewritten when it or one of its "
    "occurrences changes (an occurrence cancelled alone stays, marked STATUS:CANCELLED), deleted when "
    "it is cancelled whole. A failed write is tried again (every CARELOOP_CLAIM_TIMEOUT seconds) until "
    "the calendar takes it; `last_error` says why it is failing. The family and admin keys only."
)


def _answer(calendar: CaldavCalendar) -> dict:
    refs = [
        str(i) for i in g.db.scalars(select(Checkin.id).where(Checkin.notebook_id == calendar.notebook_id))
    ]
    pending = g.db.scalar(
        select(func.count())
        .select_from(OutboxEntry)
        .where(
            OutboxEntry.topic == publishing.CALDAV_TOPIC,
            OutboxEntry.done_at.is_(None),
            OutboxEntry.ref_id.in_(refs),
        )
    )
    return {
        "notebook_id": calendar.notebook_id,
        "url": calendar.url,
        "username": calendar.username,
        "has_password": bool(calendar.password),
        "last_published_at": iso(calendar.last_published_at),
        "last_error": calendar.last_error,
        "last_error_at": iso(calendar.last_error_at),
        "pending": int(pending or 0),
        "updated_at": iso(calendar.updated_at or utcnow()),
    }


@bp.put("/notebooks/<id:notebook_id>/caldav")
@bp.auth_required(auth)
@before_the_body(Action.CHANGE_NOTEBOOK)
@bp.input(CaldavIn, arg_name="body")
@bp.output(CaldavOut, links=api_links.FROM_CALDAV)
@bp.doc(
    operation_id="setCaldavCalendar",
    summary="Publish the notebook's check-ins to a CalDAV calendar (family or admin key)",
    description=DESCRIPTION + " Setting it (again) publishes every check-in the notebook has.",
    responses={404: "No such notebook", 422: "Invalid, or a URL careloop will not call (it names why)"},
)
def put_caldav(notebook_id: str, body: CaldavIn):
    notebook = notebook_or_404(notebook_id, Action.CHANGE_NOTEBOOK)
    settings = current_app.extensions["careloop"].settings
    try:
        publishing.check_url(body.url)
        check_destination(body.url, settings.allow_private_webhooks, settings.provider_timeout)
    except publishing.CaldavSettingsError as exc:
        abort(422, "Validation error", detail={"json": {"url": [exc.message]}})
    except DestinationRefused as exc:
        abort(422, "Validation error", detail={"json": {"url": [exc.reason]}})
    calendar = publishing.configure(
        g.db, notebook.id, url=body.url, username=body.username, password=body.password
    )
    g.db.commit()
    return _answer(calendar)


@bp.get("/notebooks/<id:notebook_id>/caldav")
@bp.auth_required(auth)
@bp.output(CaldavOut)
@bp.doc(
    operation_id="getCaldavCalendar",
    summary="The notebook's CalDAV calendar, without its password (family or admin key)",
    description=DESCRIPTION,
    responses={404: "No such notebook, or it publishes to no calendar"},
)
def get_caldav(notebook_id: str):
    notebook = notebook_or_404(notebook_id, Action.CHANGE_NOTEBOOK)
    calendar = g.db.get(CaldavCalendar, notebook.id)
    if calendar is None:
        abort(404, "CalDAV calendar not found")
    return _answer(calendar)


@bp.delete("/notebooks/<id:notebook_id>/caldav")
@bp.auth_required(auth)
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="deleteCaldavCalendar",
    summary="Stop publishing to the CalDAV calendar (family or admin key)",
    description="Check-ins already on the calendar stay there; later changes are not published. "
    "The settings, password included, are forgotten. Idempotent.",
    responses={204: "Not publishing (any more)", 404: "No such notebook"},
)
def delete_caldav(notebook_id: str):
    notebook = notebook_or_404(notebook_id, Action.CHANGE_NOTEBOOK)
    publishing.remove(g.db, notebook.id)
    g.db.commit()
    return "", 204
