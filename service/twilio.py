"""Twilio's status callbacks: signature checked, status moved forward only."""

from __future__ import annotations

import logging
from functools import wraps

from apiflask import APIBlueprint, abort
from flask import current_app, g, request
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from careloop.audit import ActorType
from careloop.deliveries import apply_provider_status
from careloop.integrations.sms_twilio import TWILIO_STATUSES
from careloop.models import Delivery
from careloop.service.audit_trail import trail
from careloop.service.schemas import TwilioStatusForm, TwilioStatusQuery
from careloop.text import for_log

log = logging.getLogger("careloop.service")

bp = APIBlueprint("twilio", __name__, url_prefix="/v1/twilio", tag="Twilio")


def _public_url() -> str:
    """The URL Twilio signed: CARELOOP_PUBLIC_URL + path + query (we may sit behind a proxy)."""
    base = current_app.extensions["careloop"].settings.public_url
    query = request.query_string.decode()
    return f"{base}{request.path}" + (f"?{query}" if query else "")


def _signed_by_twilio(view):
    """Refuse what Twilio did not sign before anything reads the request: an unsigned caller
    learns nothing, not even which fields are missing (403 comes before any 422)."""

    @wraps(view)
    def checked(*args, **kwargs):
        settings = current_app.extensions["careloop"].settings
        seen = trail()  # every callback is audited, the refused ones too
        if not settings.twilio_auth_token:
            seen.reason = "twilio not configured"
            abort(404, "Twilio is not configured")
        validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(_public_url(), request.form.to_dict(), signature):
            seen.reason = "bad signature"
            abort(403, "invalid Twilio signature")
        seen.actor_type = ActorType.TWILIO
        return view(*args, **kwargs)

    return checked


@bp.post("/status")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="twilioStatus",
    summary="Twilio message status callback",
    description="Form-encoded, as Twilio sends it; needs a valid X-Twilio-Signature. "
    "The delivery and the attempt are named by the `delivery` and `attempt` query parameters careloop "
    "put in the callback URL; a report about an attempt before a manual retry is ignored.",
    security=[],
    responses={
        204: "Applied, or ignored as out of order",
        403: "Bad signature",
        404: "Twilio not configured",
    },
)
@_signed_by_twilio
@bp.input(TwilioStatusQuery, location="query", arg_name="query")
@bp.input(TwilioStatusForm, location="form", arg_name="form")
def status_callback(query: TwilioStatusQuery, form: TwilioStatusForm):
    status = form.MessageStatus
    mapped = TWILIO_STATUSES.get(status)
    reason = f"Twilio reported {status}" + (f" (error {form.ErrorCode})" if form.ErrorCode else "")
    attempt = int(query.attempt) if query.attempt else None
    changed = mapped is not None and apply_provider_status(
        g.db, query.delivery, form.MessageSid, mapped, reason, attempt=attempt
    )
    seen = trail()
    seen.target_id = query.delivery
    notebook_id = g.db.scalar(select(Delivery.notebook_id).where(Delivery.id == query.delivery))
    seen.notebook_ids = [notebook_id] if notebook_id else []
    log.info(
        "twilio status %s for delivery %s (%s)",
        for_log(status),
        query.delivery,
        "applied" if changed else "ignored",
    )
    return "", 204
