"""SMS through Twilio's Messages API, with the official ``twilio`` client.

One request per attempt and no retries here: a failure becomes a :class:`DeliveryError` that
says whether resending can help. An attempt that timed out may still have reached Twilio, so
the worker calls :meth:`TwilioSMS.lookup` before it sends again.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, timedelta
from typing import NoReturn
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from careloop.config.settings import Settings
from careloop.contacts import UNTEXTABLE, deliverable_phone
from careloop.gsm import to_gsm7
from careloop.integrations.base import DEFAULT_TIMEOUT, Channel, DeliveryError, parse_retry_after
from careloop.messages import OutgoingMessage, ProviderReceipt
from careloop.vocabulary import ChannelKind, DeliveryStatus

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts Twilio can never reach: no status-callback URL is sent for them."""

logger = logging.getLogger("careloop.integrations.sms_twilio")

TWILIO_API_URL = "https://api.twilio.com"
"""Where twilio-python sends every Messages request; replaced by ``api_url`` when given."""

PERMANENT_CODES: dict[int, str] = {
    21211: "invalid 'To' phone number",
    21408: "sending to this region is not enabled on the account",
    21606: "the 'From' number cannot send SMS for this account",
    21610: "recipient has opted out (STOP)",
    21612: "the 'To' number cannot be reached from the 'From' number",
    21614: "the 'To' number is not a mobile number",
}
"""Twilio error codes that no resend can fix, with the reason kept on the delivery row."""

TWILIO_STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.SENT,
    "scheduled": DeliveryStatus.SENT,
    "queued": DeliveryStatus.SENT,
    "sending": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
"""Twilio's MessageStatus → careloop's delivery status, the one mapping (Twilio's "queued"
means it has the message: careloop's ``sent``)."""

SENT_STATUSES = frozenset(k for k, v in TWILIO_STATUSES.items() if v == DeliveryStatus.SENT)
"""Twilio statuses that mean it has the message and will deliver it (careloop's ``sent``)."""

DELIVERED_STATUSES = frozenset(k for k, v in TWILIO_STATUSES.items() if v == DeliveryStatus.DELIVERED)
"""Twilio statuses that mean the handset has it (careloop's ``delivered``)."""

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_NUMBER_LIKE = re.compile(r"\+?[0-9][0-9 ().-]{5,}[0-9]")

def mask_number(number: str | None) -> str:
    """A phone number safe for logs: every character but the last two digits starred."""
    if not number:
        return "<none>"
    return "*" * max(len(number) - 2, 0) + number[-2:]


def _mask_numbers_in(text: str) -> str:
    return _NUMBER_LIKE.sub(lambda match: mask_number(match.group(0)), text)


def _check_url(value: str, setting: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{setting} must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


class CareloopTwilioHttpClient(TwilioHttpClient):
    """twilio-python's transport with a bounded timeout, an overridable base URL and no PII logs.

    Args:
        timeout: seconds any request may take to connect and to read; a longer timeout asked
            for by the caller is cut to this one.
        api_url: replaces ``https://api.twilio.com`` in every URL (``TWILIO_API_URL``).
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, api_url: str | None = None):
        super().__init__(timeout=timeout, logger=logger)
        self.api_url = api_url.rstrip("/") if api_url else None
        self._local = threading.local()

    @property
    def last_response(self) -> Response | None:
        """The answer to this thread's latest request (error responses included)."""
        return getattr(self._local, "last_response", None)

    def request(
        self,
        method,
        url,
        params=None,
        data=None,
        headers=None,
        auth=None,
        timeout=None,
        allow_redirects=False,
    ) -> Response:
        if self.api_url and url.startswith(TWILIO_API_URL):
            url = self.api_url + url[len(TWILIO_API_URL) :]
        if timeout is None or timeout > self.timeout:
            timeout = self.timeout
        self._local.last_response = None
        response = super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        self._local.last_response = response
        return response

    # twilio-python logs query strings (To=...) at INFO; keep to method and path.
    def log_request(self, kwargs) -> None:
        logger.debug("twilio request %s %s", kwargs["method"], urlsplit(kwargs["url"]).path)

    def log_response(self, status_code, response) -> None:
        logger.debug("twilio response %s", status_code)


class TwilioSMS(Channel):
    """Text messages through Twilio's Programmable Messaging API.

    Args:
        account_sid: ``TWILIO_ACCOUNT_SID``, ``AC`` and 32 hex digits.
        auth_token: ``TWILIO_AUTH_TOKEN``.
        from_number: ``TWILIO_FROM``, an E.164 number of the account.
        api_url: ``TWILIO_API_URL``, replaces ``https://api.twilio.com`` (staging, tests).
        status_callback_base: careloop's public URL; when set each message asks Twilio to
            report its status to ``{base}/v1/twilio/status?attempt={n}&delivery={delivery_id}``.
        timeout: seconds each request may take (connect and read).

    Raises:
        ValueError: naming the setting that is missing or malformed.
    """

    kind = ChannelKind.SMS
    body_maxlen = 1600
    """Twilio refuses longer bodies (error 21617); careloop refuses them before sending."""
    lookup_window = timedelta(minutes=5)
    """How long before ``message.created_at`` a matching message still counts as this delivery."""
    lookup_page_size = 50
    """Messages to the recipient that :meth:`lookup` reads (one page, one request)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        *,
        api_url: str | None = None,
        status_callback_base: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if not account_sid or not _ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError("TWILIO_ACCOUNT_SID must start with AC and be 34 characters (AC + 32 hex)")
        if not auth_token:
            raise ValueError("TWILIO_AUTH_TOKEN is required")
        if not from_number or not _E164.fullmatch(from_number):
            raise ValueError("TWILIO_FROM must be an E.164 phone number such as +15005550006")
        if timeout is None or timeout <= 0:
            raise ValueError("CARELOOP_PROVIDER_TIMEOUT must be a positive number of seconds")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self.api_url = _check_url(api_url, "TWILIO_API_URL") if api_url else None
        self.status_callback_base = (
            _check_url(status_callback_base, "CARELOOP_PUBLIC_URL") if status_callback_base else None
        )
        self.timeout = float(timeout)
        self.http_client = CareloopTwilioHttpClient(timeout=self.timeout, api_url=self.api_url)
        self.client = Client(account_sid, auth_token, http_client=self.http_client)

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioSMS:
        """The channel as careloop's settings describe it (``TWILIO_*``, public URL, timeout)."""
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        callback_base: str | None = settings.public_url
        if urlsplit(settings.public_url).hostname in LOOPBACK_HOSTS:
            # Twilio cannot call this machine's loopback; asking it to would only fail there.
            logger.warning("CARELOOP_PUBLIC_URL is a loopback address: no Twilio status callbacks")
            callback_base = None
        return cls(
            settings.twilio_account_sid or "",
            token,
            settings.twilio_from or "",
            api_url=settings.twilio_api_url,
            status_callback_base=callback_base,
            timeout=settings.provider_timeout,
        )

    def __repr__(self) -> str:
        return f"TwilioSMS(account_sid={self.account_sid!r}, from={mask_number(self.from_number)})"

    def status_callback_url(self, message: OutgoingMessage) -> str | None:
        if not self.status_callback_base:
            return None
        # The attempt lets a late report of an earlier attempt be told from the current one's.
        return (
            f"{self.status_callback_base}/v1/twilio/status"
            f"?attempt={int(message.attempt)}&delivery={message.delivery_id}"
        )

    def send(self, message: OutgoingMessage) -> ProviderReceipt:
        """Hand one text to Twilio.

        Returns:
            The receipt with Twilio's message SID; status ``sent`` (or ``delivered``).

        Raises:
            DeliveryError: permanent for a bad recipient, an opted-out number, a refused
                request or an over-long body; transient for 429, 5xx, timeouts and
                connection errors (``retry_after`` from Twilio's ``Retry-After``).
        """
        body = to_gsm7(message.text)  # what the renderer made already; the outbox writes the same
        self._check_before_sending(message, body)
        params = {"to": message.to, "from_": self.from_number, "body": body}
        callback = self.status_callback_url(message)
        if callback:
            params["status_callback"] = callback
        try:
            created = self.client.messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            self._raise_for_exception(exc)
        except requests.RequestException as exc:
            raise self.transport_error(exc, "send") from exc
        except (TwilioException, ValueError) as exc:
            # Twilio answered 2xx with something unreadable: it may well have the message.
            reason = f"Twilio's answer was unreadable, outcome unknown ({type(exc).__name__})"
            raise DeliveryError(reason, maybe_sent=True) from exc
        receipt = self._receipt(created.sid, created.status)
        logger.info(
            "twilio accepted delivery=%s attempt=%s to=%s sid=%s status=%s",
            message.delivery_id,
            message.attempt,
            mask_number(message.to),
            created.sid,
            created.status,
        )
        return receipt

    def lookup(self, message: OutgoingMessage) -> ProviderReceipt | None:
        """Whether an earlier attempt of this delivery reached Twilio.

        Reads one page of the newest messages from ``TWILIO_FROM`` to ``message.to`` and looks
        for one with exactly this body, created no earlier than ``lookup_window`` before
        ``message.created_at`` (when known). Failed, undelivered and canceled messages never
        reached the handset, so they do not count.

        Returns:
            A receipt for the matching message, or ``None``.

        Raises:
            DeliveryError: transient, when Twilio could not be asked.
        """
        body = to_gsm7(message.text)
        since = None
        if message.created_at is not None:
            created_at = message.created_at
            if created_at.tzinfo is None:
                created_at = created_at.replace(tzinfo=UTC)
            since = created_at - self.lookup_window
        try:
            # page(), not list(): list() follows next_page_uri and could make many requests.
            page = self.client.messages.page(
                to=message.to, from_=self.from_number, page_size=self.lookup_page_size
            )
            candidates = list(page)
        except (TwilioRestException, TwilioServiceException) as exc:
            retry_after = self._retry_after()
            raise DeliveryError(
                f"Twilio {exc.code}: could not list messages (HTTP {exc.status})",
                permanent=False,
                retry_after=retry_after,
            ) from exc
        except requests.RequestException as exc:
            raise self.transport_error(exc, "lookup") from exc
        except (TwilioException, ValueError) as exc:
            raise DeliveryError(f"Twilio's message list was unreadable ({type(exc).__name__})") from exc
        for candidate in candidates:
            if candidate.to != message.to or candidate.body != body:
                continue
            if candidate.direction and not candidate.direction.startswith("outbound"):
                continue
            if candidate.status not in SENT_STATUSES | DELIVERED_STATUSES:
                continue
            if since is not None and (candidate.date_created is None or candidate.date_created < since):
                continue
            logger.info(
                "twilio already has delivery=%s to=%s sid=%s status=%s",
                message.delivery_id,
                mask_number(message.to),
                candidate.sid,
                candidate.status,
            )
            return self._receipt(candidate.sid, candidate.status)
        return None

    def raise_for_response(
        self, status: int, code: int | None, detail: str, *, retry_after: float | None = None
    ) -> NoReturn:
        """Turn Twilio's refusal into a :class:`DeliveryError`; the one place that decides.

        Known recipient/account errors and every other 4xx but 429 are permanent; 429 and
        5xx are transient. ``detail`` is Twilio's message with phone numbers masked.
        """
        if code in PERMANENT_CODES:
            raise DeliveryError(f"Twilio {code}: {PERMANENT_CODES[code]}", permanent=True)
        if status == 429:
            raise DeliveryError(f"Twilio {code}: rate limited (HTTP 429)", retry_after=retry_after)
        if 400 <= status < 500:
            raise DeliveryError(f"Twilio {code}: refused (HTTP {status}): {detail}", permanent=True)
        raise DeliveryError(f"Twilio {code}: HTTP {status}: {detail}", retry_after=retry_after)

    def transport_error(self, exc: requests.RequestException, action: str) -> DeliveryError:
        """A transient error for a request that got no answer.

        A refused connection or a connect timeout never reached Twilio; a read timeout or a
        dropped connection may have, which the reason says so the retry looks up first.
        """
        if isinstance(exc, requests.ConnectTimeout):
            what = "connect timeout"
        elif isinstance(exc, requests.Timeout):
            what = "timeout waiting for the answer, outcome unknown"
        elif isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower():
            what = "connection refused"
        elif isinstance(exc, requests.ConnectionError):
            what = "connection lost, outcome unknown"
        else:
            what = type(exc).__name__
        logger.warning("twilio %s failed: %s", action, what)
        return DeliveryError(
            f"Twilio unreachable during {action}: {what}",
            permanent=False,
            maybe_sent="outcome unknown" in what,
        )

    def _check_before_sending(self, message: OutgoingMessage, body: str) -> None:
        if not deliverable_phone(message.to):
            raise DeliveryError(UNTEXTABLE, permanent=True)
        if not body.strip():
            raise DeliveryError("SMS body is empty", permanent=True)
        if len(body) > self.body_maxlen:
            raise DeliveryError(
                f"SMS body is {len(body)} characters, Twilio takes at most {self.body_maxlen}",
                permanent=True,
            )

    def _raise_for_exception(self, exc: TwilioRestException | TwilioServiceException) -> NoReturn:
        status = int(exc.status or 0)
        code = exc.code if exc.code is not None else status
        detail = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "")
        detail = _mask_numbers_in(str(detail))
        retry_after = self._retry_after()
        logger.warning("twilio refused: HTTP %s code %s", status, code)
        try:
            self.raise_for_response(status, code, detail, retry_after=retry_after)
        except DeliveryError as error:
            raise error from exc
        raise AssertionError("raise_for_response must raise")  # pragma: no cover

    def _retry_after(self) -> float | None:
        response = self.http_client.last_response
        if response is None or not response.headers:
            return None
        return parse_retry_after(response.headers.get("Retry-After"))

    def _receipt(self, sid: str, status: str | None) -> ProviderReceipt:
        if status in DELIVERED_STATUSES:
            return ProviderReceipt(provider_id=sid, status=DeliveryStatus.DELIVERED)
        if status in SENT_STATUSES or status is None:
            return ProviderReceipt(provider_id=sid, status=DeliveryStatus.SENT)
        # created but already failed/undelivered/canceled: Twilio will not deliver it
        raise DeliveryError(f"Twilio accepted the message as {status!r}", permanent=True)
