"""Twilio's webhooks: status callbacks (status moved forward only) and incoming texts (two-way
SMS: careloop.replies), each refused unless Twilio signed it."""

from __future__ import annotations

import logging
from functools import wraps

from apiflask import APIBlueprint, abort
from flask import Response, current_app, g, request
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from careloop import metrics, replies
from careloop.audit import ActorType
from careloop.contacts import normalize_phone
from careloop.deliveries import apply_provider_status
from careloop.handover import hand_over_events
from careloop.integrations.sms_twilio import TWILIO_STATUSES
from careloop.models import Delivery, Event
from careloop.service.audit_trail import trail
from careloop.service.schemas import TwilioInboundForm, TwilioStatusForm, TwilioStatusQuery
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
            metrics.webhook_verification_failed("twilio")
            log.warning("twilio status callback refused: its signature does not verify")
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
    delivery = g.db.get(Delivery, query.delivery)
    seen.notebook_ids = [delivery.notebook_id] if delivery is not None else []
    event = g.db.get(Event, delivery.event_id) if delivery is not None else None
    log.info(
        "twilio status %s for delivery %s (%s); the event's request id: %s",
        for_log(status),
        query.delivery,
        "applied" if changed else "ignored",
        (event.context or {}).get("request_id") if event is not None else None,
    )
    return "", 204


TWIML = "text/xml"


@bp.post("/inbound")
@bp.doc(
    operation_id="twilioInbound",
    summary="Twilio incoming-message webhook (two-way SMS)",
    description="Point the Twilio number's \"A message comes in\" webhook here (HTTP POST). Needs a valid "
    "X-Twilio-Signature. STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT (and OPTOUT, REVOKE) stop texts to "
    "the member; START, YES, UNSTOP resume them; HELP answers a help text; OK or 1 acknowledges the "
    "member's most recent alert that waits for an acknowledgement (its escalation stops); any other text "
    "from a member (and OK with nothing to acknowledge) becomes a `note.added` on their notebook, authored "
    "by them. A number careloop does not know records nothing. Answers TwiML.",
    security=[],
    responses={
        200: {
            "description": "TwiML: the reply to text back, if any",
            "content": {
                TWIML: {
                    "schema": {"type": "string"},
                    "example": '<?xml version="1.0" encoding="UTF-8"?><Response><Message>careloop: thanks, '
                    "your note was added to the care notebook.</Message></Response>",
                }
            },
        },
        403: "Bad signature",
        404: "Twilio not configured",
    },
)
@_signed_by_twilio
@bp.input(TwilioInboundForm, location="form", arg_name="form")
def inbound(form: TwilioInboundForm):
    twiml = MessagingResponse()
    try:
        phone = normalize_phone(form.From)
    except ValueError:
        phone = None
    reply = replies.handle_reply(g.db, phone, form.Body, form.MessageSid) if phone else None
    seen = trail()
    if reply is None or reply.kind == replies.ReplyKind.UNKNOWN_NUMBER:
        seen.reason = "unknown number"  # the audit entry, with no number in it
        log.info("inbound SMS %s from an unknown number: nothing recorded", for_log(form.MessageSid))
    else:
        seen.notebook_ids, seen.target_id = list(reply.notebook_ids), reply.event_id
        log.info("inbound SMS %s: %s", for_log(form.MessageSid), reply.kind)
        if reply.created:
            hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, [reply.event_id])
        if reply.answer:
            twiml.message(reply.answer)
    return Response(str(twiml), status=200, mimetype=TWIML)
