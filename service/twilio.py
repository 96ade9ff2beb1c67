"""Twilio's status callbacks: signature checked, status moved forward only."""

from __future__ import annotations

import logging
import re

from apiflask import APIBlueprint, abort
from flask import current_app, g, request
from twilio.request_validator import RequestValidator

from careloop.deliveries import apply_provider_status
from careloop.integrations.sms_twilio import TWILIO_STATUSES

log = logging.getLogger("careloop.service")

ATTEMPT = re.compile(r"[1-9][0-9]{0,5}")
"""The attempt number careloop put in the callback URL (ASCII digits only)."""

bp = APIBlueprint("twilio", __name__, url_prefix="/v1/twilio", tag="Twilio")


def _public_url() -> str:
    """The URL Twilio signed: CARELOOP_PUBLIC_URL + path + query (we may sit behind a proxy)."""
    base = current_app.extensions["careloop"].settings.public_url
    query = request.query_string.decode()
    return f"{base}{request.path}" + (f"?{query}" if query else "")


@bp.post("/status")
@bp.output({}, status_code=204)
@bp.doc(
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
def status_callback():
    settings = current_app.extensions["careloop"].settings
    if not settings.twilio_auth_token:
        abort(404, "Twilio is not configured")
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    signature = request.headers.get("X-Twilio-Signature", "")
    if not validator.validate(_public_url(), request.form.to_dict(), signature):
        abort(403, "invalid Twilio signature")
    delivery_id = request.args.get("delivery")
    sid = request.form.get("MessageSid") or request.form.get("SmsSid")
    status = request.form.get("MessageStatus") or request.form.get("SmsStatus")
    attempt = request.args.get("attempt")
    problems = {
        name: ["is required"]
        for name, value in (("query.delivery", delivery_id), ("MessageSid", sid), ("MessageStatus", status))
        if not value
    }
    if attempt is not None and not ATTEMPT.fullmatch(attempt):
        problems["query.attempt"] = ["must be a whole number from 1"]
    if problems:
        abort(422, "Validation error", detail={"form": problems})
    mapped = TWILIO_STATUSES.get(status)
    code = request.form.get("ErrorCode")
    reason = f"Twilio reported {status}" + (f" (error {code})" if code else "")
    changed = mapped is not None and apply_provider_status(
        g.db, delivery_id, sid, mapped, reason, attempt=int(attempt) if attempt else None
    )
    log.info(
        "twilio status %s for delivery %s (%s)", status, delivery_id, "applied" if changed else "ignored"
    )
    return "", 204
