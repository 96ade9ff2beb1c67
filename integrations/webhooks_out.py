"""Outbound webhooks: one signed HTTP POST per attempt, per Standard Webhooks
(https://www.standardwebhooks.com: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
signed by the ``standardwebhooks`` package, and the check that keeps them off private networks.

Like every channel, a sender never retries by itself: it reports what one attempt gave
(:class:`AttemptResult`) and careloop's workers own the retry schedule. Redirects are never
followed; every call (the name lookup included) has a timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import requests
from standardwebhooks.webhooks import Webhook

from careloop.integrations.base import DEFAULT_TIMEOUT, parse_retry_after

log = logging.getLogger("careloop.integrations.webhooks_out")

SCHEMES = ("http", "https")
"""The only URL schemes an endpoint may have."""

URL_MAX = 2000
"""Characters an endpoint URL may have (the database column's size)."""

RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
"""Answers after which the same message is tried again later (with ``Retry-After`` honoured)."""

GONE = 410
"""The receiver says the endpoint is gone for good: careloop disables it."""

USER_AGENT = "careloop-webhooks/1"

_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="careloop-resolve")


class DestinationRefused(ValueError):
    """An endpoint URL careloop will not call; ``reason`` says why (no address in it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_url(url: str) -> None:
    """The URL's own shape: http(s), a host, no user name or password, no fragment.

    Raises:
        DestinationRefused: naming what is wrong.
    """
    if len(url) > URL_MAX:
        raise DestinationRefused(f"must be at most {URL_MAX} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused("is not a valid URL") from None
    if parts.scheme not in SCHEMES:
        raise DestinationRefused("must be an http or https URL")
    if not parts.hostname:
        raise DestinationRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("must not carry a user name or password")
    if parts.fragment:
        raise DestinationRefused("must not have a fragment")
    if port == 0:
        raise DestinationRefused("must not use port 0")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, bounded by ``timeout``)."""
    future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except FutureTimeout:
        raise DestinationRefused("its host name did not resolve in time") from None
    except (OSError, UnicodeError):
        raise DestinationRefused("its host name does not resolve") from None
    return sorted({info[4][0] for info in infos})


def check_destination(url: str, allow_private: bool, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Refuse a URL careloop must not call: a bad shape, a host that does not resolve, or one
    with any private, loopback, link-local or otherwise non-public address (every address the
    name resolves to is checked), unless ``allow_private``.

    Raises:
        DestinationRefused: naming why (never the address).
    """
    check_url(url)
    if allow_private:
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for text in resolve(parts.hostname, port, timeout):
        if not _public(ipaddress.ip_address(text.split("%", 1)[0])):
            raise DestinationRefused("resolves to a private, loopback or link-local address")


Outcome = Literal["ok", "retry", "gone", "fail"]


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt gave: ``ok`` (2xx), ``retry`` (timeout, connection error, 5xx, 429 …),
    ``gone`` (410) or ``fail`` (any other answer: resending the same message cannot help)."""

    outcome: Outcome
    status_code: int | None
    latency_ms: int
    error: str | None = None
    retry_after: float | None = None


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header's value (``v1,<base64>``)."""
    return Webhook(secret).sign(msg_id, timestamp, body)


class WebhookSender:
    """Posts signed messages to endpoints.

    Args:
        timeout: seconds the connection and the answer may each take.
        allow_private: skip the private-address check (tests; an on-premises installation).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, allow_private: bool = False):
        self.timeout = timeout
        self.allow_private = allow_private

    def post(self, url: str, secret: str, msg_id: str, body: str) -> AttemptResult:
        """One attempt. The destination is checked again first (a name may point elsewhere now)."""
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            check_destination(url, self.allow_private, self.timeout)
        except DestinationRefused as exc:
            return AttemptResult("retry", None, took(), f"destination refused: its URL {exc.reason}")
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(secret, msg_id, now, body),
        }
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc from the environment: straight to the checked host
        try:
            with session.post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,
                stream=True,  # the answer's body is never read
            ) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except requests.Timeout:
            return AttemptResult("retry", None, took(), "timed out")
        except requests.ConnectionError:
            return AttemptResult("retry", None, took(), "could not connect")
        except requests.RequestException as exc:
            return AttemptResult("retry", None, took(), f"request failed ({type(exc).__name__})")
        finally:
            session.close()
        latency = took()
        if 200 <= status < 300:
            return AttemptResult("ok", status, latency)
        if status == GONE:
            return AttemptResult("gone", status, latency, "the endpoint answered 410 Gone")
        if status in RETRY_STATUSES:
            return AttemptResult("retry", status, latency, f"answered {status}", retry_after)
        if 300 <= status < 400:
            return AttemptResult("fail", status, latency, f"answered {status} (redirects are not followed)")
        return AttemptResult("fail", status, latency, f"answered {status}")
