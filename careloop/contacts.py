"""Phone numbers and email addresses careloop can deliver to: one rule, used by the API when a
member is saved and by every channel before it sends (the outbox stand-in included), so an
address the API accepted is one a channel can use.

- A phone number is E.164 in ASCII digits (Twilio reads ``[0-9]`` only: a fullwidth ``１``
  must not slip through as a "digit"), with a country calling code that exists and a length
  that code's numbering plan allows (Google's libphonenumber metadata, the ``phonenumbers``
  package). It is stored as ``phonenumbers`` formats it in E.164.
- An email address is one ``email-validator`` accepts without SMTPUTF8 (careloop's SMTP
  channel sends plain ASCII envelopes): an ASCII local part, and a domain that is ASCII or an
  internationalised name, which is stored in its ASCII (IDNA) form, ``a@xn--bcher-kva.example``.
"""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
"""E.164's shape: ``+``, a country code and the number, 7 to 15 ASCII digits in all."""

UNTEXTABLE = "recipient is not an E.164 phone number careloop can text"
"""Why a channel refuses a phone number the API would refuse (a permanent failure)."""

UNMAILABLE = "recipient is not an email address careloop can send to"
"""Why a channel refuses an email address the API would refuse (a permanent failure)."""

PHONE_FORMAT = "e164"
"""The OpenAPI ``format`` of a phone number: E.164 and possible in its numbering plan."""


def normalize_phone(value: str) -> str:
    """The number in E.164 as careloop stores it.

    Raises:
        ValueError: saying what is wrong (the API's 422 message).
    """
    if not re.fullmatch(E164_PATTERN, value):
        raise ValueError("must be an E.164 phone number in ASCII digits, such as +15551234567")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("is not a phone number: " + str(exc)) from exc
    if not phonenumbers.is_possible_number(number):
        raise ValueError("cannot be a phone number: its length does not fit its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    """The address as careloop stores it (domain in lower-case ASCII).

    Raises:
        ValueError: saying what is wrong (the API's 422 message).
    """
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return checked.ascii_email or checked.normalized


def deliverable_phone(value: str | None) -> bool:
    """Whether a channel may text ``value``: it is a number exactly as the API stores them."""
    try:
        return bool(value) and normalize_phone(value) == value
    except ValueError:
        return False


def deliverable_email(value: str | None) -> bool:
    """Whether a channel may mail ``value``: it is an address exactly as the API stores them."""
    try:
        return bool(value) and normalize_email(value) == value
    except ValueError:
        return False
