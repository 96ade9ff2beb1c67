"""Sources: systems that post events to careloop, and the Standard Webhooks signatures they sign
with (https://www.standardwebhooks.com).

A source's secret is ``whsec_`` and 32 random bytes in base64, shown once when it is made or
rotated. It is stored as given out, not hashed: a Standard Webhooks signature is an HMAC, so
checking one needs the secret itself (the choice Svix and every Standard Webhooks receiver
make). The database already holds the health data a forged webhook could add to, so it is the
boundary that guards both; a database copy that leaks means rotating every source's secret.

Verification is separate from reading the body: :func:`verify` checks the ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` headers over the raw bytes and parses
nothing, so a kind whose bodies are not JSON (HL7 v2's ER7 text) is verified the same way.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from careloop.models import Source, utcnow

SECRET_PREFIX = "whsec_"
"""Standard Webhooks' prefix of a signing secret."""

SECRET_BYTES = 32
"""Random bytes in a secret (Standard Webhooks asks for 24 to 64)."""

TOLERANCE = timedelta(minutes=5)
"""How far a webhook-timestamp may be from careloop's clock, either way (the package's own
tolerance; replays older than this are refused even with a fresh webhook-id)."""

WEBHOOK_ID_PATTERN = r"[\x21-\x7e]{1,200}"
"""A webhook-id careloop keeps: 1 to 200 printable ASCII characters without spaces."""


class SignatureRefused(Exception):
    """The request is not one this source signed (→ 401); ``reason`` says what failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """A request that verified: its webhook-id and the moment its sender signed it."""

    webhook_id: str
    signed_at: datetime


def mint_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def rotate(source: Source, grace: timedelta, now: datetime | None = None) -> str:
    """Give ``source`` a new secret; the one it had verifies for ``grace`` more. Returns the
    new secret (to be shown once). A rotation within the grace of the last drops the secret
    before the current one at once: only the current and the one just replaced verify."""
    now = now or utcnow()
    source.previous_secret = source.secret
    source.previous_secret_expires_at = now + grace
    source.secret = mint_secret()
    source.secret_rotated_at = now
    return source.secret


def secrets_in_force(source: Source, now: datetime | None = None) -> list[str]:
    """The secrets a signature may be made with at ``now``: the current one, and the one
    before it while its grace lasts."""
    now = now or utcnow()
    found = [source.secret]
    if (
        source.previous_secret
        and source.previous_secret_expires_at
        and now < source.previous_secret_expires_at
    ):
        found.append(source.previous_secret)
    return found


def claimed_webhook_id(headers: Mapping[str, str]) -> str | None:
    """The webhook-id a request claims, if it has a shape careloop keeps (before verifying it:
    a refused request is recorded with it, but it never reserves the id)."""
    value = next((v for k, v in headers.items() if k.lower() == "webhook-id"), None)
    return value if value is not None and re.fullmatch(WEBHOOK_ID_PATTERN, value) else None


def verify(source: Source, body: bytes, headers: Mapping[str, str], now: datetime | None = None) -> Verified:
    """Check the Standard Webhooks headers over the raw ``body`` with every secret in force.

    Args:
        source: the source the request was posted to.
        body: the request body, exactly as received (nothing parsed).
        headers: the request headers (any mapping; names are matched case-insensitively).
        now: the moment that decides whether a rotated secret's grace has ended.

    Raises:
        SignatureRefused: a header is missing or malformed, the timestamp is more than five
            minutes from now either way, or no signature matches.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    wanted = {name: lowered.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    if not all(wanted.values()):
        raise SignatureRefused("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not re.fullmatch(WEBHOOK_ID_PATTERN, wanted["webhook-id"]):
        raise SignatureRefused("webhook-id must be 1 to 200 printable ASCII characters")
    try:
        text = body.decode("utf-8")  # the package signs text; Standard Webhooks bodies are UTF-8
    except UnicodeDecodeError:
        raise SignatureRefused("the body is not UTF-8 text") from None
    last = SignatureRefused("no signature matches")
    for secret in secrets_in_force(source, now):
        try:
            Webhook(secret).verify(text, wanted, json_parse=False)
        except WebhookVerificationError as exc:
            last = SignatureRefused(_reason(str(exc)))
            if last.reason != "no signature matches":
                raise last from None  # a header problem: no other secret can fix it
            continue
        except ValueError:  # a signature that is not "v1,<base64>"
            raise SignatureRefused("malformed webhook-signature header") from None
        return Verified(wanted["webhook-id"], _signed_at(wanted["webhook-timestamp"]))
    raise last


_REASONS = {
    "Message timestamp too old": "webhook-timestamp is more than 5 minutes old",
    "Message timestamp too new": "webhook-timestamp is more than 5 minutes in the future",
    "Invalid Signature Headers": "webhook-timestamp is not a Unix time",
    "No matching signature found": "no signature matches",
    "Missing required headers": "missing webhook-id, webhook-timestamp or webhook-signature header",
}


def _reason(message: str) -> str:
    return _REASONS.get(message, "the signature does not verify")


def _signed_at(timestamp: str) -> datetime:
    return datetime.fromtimestamp(float(timestamp), tz=UTC)
