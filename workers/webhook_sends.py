"""Sending webhook messages: the ``webhook`` branch of the delivery job, and the admin's email
about an endpoint careloop disabled (sent by the relay, so a failed email is tried again).

A message is claimed like any delivery; its attempt is recorded as called before the POST
(``mark_provider_called``), every attempt is logged (``webhook_attempts``), and a failure is
retried on the one schedule (CARELOOP_RETRY_SCHEDULE, jittered, ``Retry-After`` honoured).
Unlike a text, an attempt whose answer was lost is simply sent again: a receiver cannot be
asked what it got, and Standard Webhooks receivers de-duplicate by ``webhook-id``.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from careloop import deliveries as dl
from careloop import webhooks
from careloop.handover import hand_over_deliveries
from careloop.integrations.base import DeliveryError
from careloop.messages import OutgoingMessage
from careloop.models import Delivery, Event, WebhookEndpoint, utcnow
from careloop.runtime import Runtime
from careloop.vocabulary import WEBHOOK_CHANNEL, ChannelKind, DeliveryStatus

log = logging.getLogger("careloop.workers")

MAX_RETRY_AFTER = 86400.0
"""The longest ``Retry-After`` honoured (seconds); a longer one waits this long."""


def failing_key(delivery: Delivery) -> str:
    """What a transient failure puts out of a batch: a whole channel, or one webhook endpoint
    (one clinic's server being down never holds up another's messages)."""
    if delivery.channel == WEBHOOK_CHANNEL:
        return f"{WEBHOOK_CHANNEL}:{delivery.member_id}"
    return delivery.channel


def is_webhook(session: Session, claim: dl.Claim) -> bool:
    delivery = session.get(Delivery, claim.delivery_id)
    return delivery is not None and delivery.channel == WEBHOOK_CHANNEL


def retry_delay(round_attempt: int, schedule: tuple[float, ...], retry_after: float | None) -> float:
    """The schedule's jittered delay, or the receiver's ``Retry-After`` when longer (up to a day)."""
    delay = dl.retry_delay(round_attempt, schedule)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def _fail(session: Session, claim: dl.Claim, reason: str) -> str:
    dl.mark_failed(session, claim, reason)
    log.warning("webhook message %s failed: %s", claim.delivery_id, reason)
    return DeliveryStatus.FAILED


def _again(
    session: Session, runtime: Runtime, claim: dl.Claim, reason: str, retry_after: float | None
) -> str:
    schedule = runtime.settings.retry_schedule
    if claim.round_attempt > len(schedule):
        return _fail(session, claim, f"gave up after {claim.round_attempt} attempts: {reason}")
    delay = retry_delay(claim.round_attempt, schedule, retry_after)
    dl.requeue(session, claim, reason, delay)
    log.info("webhook message %s: %s; trying again in %.1fs", claim.delivery_id, reason, delay)
    hand_over_deliveries(session, runtime.dispatcher, [claim.delivery_id], delay=delay)
    return DeliveryStatus.QUEUED


def send(session: Session, runtime: Runtime, claim: dl.Claim, failing: set[str]) -> str:
    """One attempt at a claimed webhook message. Returns the status it ended in."""
    message = session.get(Delivery, claim.delivery_id)
    endpoint = session.get(WebhookEndpoint, message.member_id)
    event = session.get(Event, message.event_id)
    if endpoint is None or event is None:
        return _fail(session, claim, "the endpoint or the event no longer exists")
    if not endpoint.enabled:
        return _fail(session, claim, f"the endpoint is disabled: {endpoint.disabled_reason}")
    body = webhooks.message_body(message, event, endpoint.payload)
    if not dl.mark_provider_called(session, claim):
        log.info("webhook message %s: the claim was taken over; not sending", claim.delivery_id)
        return "not-claimed"
    result = runtime.webhook_sender.post(endpoint.url, endpoint.secret, message.id, body)
    now = utcnow()
    webhooks.record_attempt(session, message, result.status_code, result.latency_ms, result.error, now)
    if result.outcome == "ok":
        webhooks.note_success(session, endpoint.id)
        dl.mark_sent(session, claim, f"HTTP {result.status_code}", DeliveryStatus.DELIVERED)
        log.info("webhook message %s delivered (HTTP %s)", message.id, result.status_code)
        return DeliveryStatus.DELIVERED
    if result.outcome == "gone":
        failing.add(failing_key(message))
        if webhooks.disable(session, endpoint.id, "the endpoint answered 410 Gone"):
            log.warning("webhook endpoint %s answered 410 Gone: disabled", endpoint.id)
        return _fail(session, claim, result.error)
    disabled = webhooks.note_failure(session, endpoint.id, now, runtime.settings.webhook_disable_after)
    if disabled:
        log.warning("webhook endpoint %s disabled: failing for too long", endpoint.id)
    if result.outcome == "fail" or disabled:
        return _fail(session, claim, result.error)
    failing.add(failing_key(message))
    return _again(session, runtime, claim, result.error, result.retry_after)


def resend_interrupted(session: Session, runtime: Runtime, claim: dl.Claim) -> str:
    """An attempt whose worker stopped after the POST began: send it again (same webhook-id)."""
    reason = "an attempt was interrupted; sending again (receivers de-duplicate by webhook-id)"
    return _again(session, runtime, claim, reason, None)


def notify_disabled(runtime: Runtime, session: Session) -> int:
    """Email the admin (CARELOOP_ADMIN_EMAIL) about each endpoint disabled since the last
    notice; one the email did not reach is tried on the next sweep. Returns how many were sent."""
    sent = 0
    for endpoint in webhooks.unnotified_disabled(session):
        address = runtime.settings.admin_email
        if address:
            message = OutgoingMessage(
                delivery_id=f"{endpoint.id}-disabled",
                attempt=1,
                channel=ChannelKind.EMAIL,
                to=address,
                to_name="careloop admin",
                subject=f"careloop disabled webhook endpoint {endpoint.id}",
                text=(
                    f"careloop stopped sending to webhook endpoint {endpoint.id}: "
                    f"{endpoint.disabled_reason}.\n\n"
                    "Its messages are kept. When the receiving system works again, send what it missed "
                    f"with POST /v1/endpoints/{endpoint.id}/replay (this turns the endpoint back on).\n"
                ),
            )
            try:
                runtime.channels[ChannelKind.EMAIL].send(message)
            except DeliveryError as exc:
                log.warning("could not email the admin about endpoint %s: %s", endpoint.id, exc.reason)
                if not exc.permanent:
                    continue  # the next sweep tries again
            else:
                sent += 1
        else:
            log.warning("webhook endpoint %s is disabled; CARELOOP_ADMIN_EMAIL is not set", endpoint.id)
        webhooks.mark_notified(session, endpoint.id, endpoint.disabled_at)
    return sent
