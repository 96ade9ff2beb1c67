"""schemathesis hooks for careloop's API description (loaded through tests/schemathesis.toml):
how to write the two string formats careloop documents by name, so that a schema-valid value
is one careloop accepts and the checks that valid data is accepted stay meaningful.

- ``e164``: E.164 in ASCII digits *and* possible for its country code's numbering plan, which
  no regular expression can say: every region's example number from libphonenumber's metadata,
  with other last digits.
- ``iana-time-zone``: one of IANA's names (too many for an enum in the document).
- ``webhook-url``: an http(s) URL whose host resolves to public addresses; here always one on
  127.0.0.1 with nothing listening (port 9), so no name is looked up and nothing leaves the
  machine (the server under test refuses it as private: a 422 naming ``url``).
- ``email``: an address careloop's one rule accepts (``careloop.contacts``): email-validator
  refuses special-use domains such as ``.test``, which a generic generator may pick.
"""

from __future__ import annotations

import json

import phonenumbers
import schemathesis
from hypothesis import strategies as st

from careloop.contacts import PHONE_FORMAT, normalize_email
from careloop.service.schemas import WEBHOOK_URL_FORMAT
from careloop.timezones import TIME_ZONE_FORMAT, TIME_ZONES

EXAMPLES = sorted(
    phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    for number in map(phonenumbers.example_number, phonenumbers.SUPPORTED_REGIONS)
    if number is not None
)

schemathesis.openapi.format(
    PHONE_FORMAT,
    st.tuples(st.sampled_from(EXAMPLES), st.integers(0, 99)).map(lambda pair: f"{pair[0][:-2]}{pair[1]:02d}"),
)
schemathesis.openapi.format(TIME_ZONE_FORMAT, st.sampled_from(TIME_ZONES))
schemathesis.openapi.format(
    WEBHOOK_URL_FORMAT,
    st.from_regex(r"\A/[a-z0-9]{0,20}\Z").map(lambda path: f"http://127.0.0.1:9{path}"),
)


def _accepted(address: str) -> bool:
    try:
        normalize_email(address)
    except ValueError:
        return False
    return len(address) <= 254


EMAIL_DOMAINS = ("example.org", "clinic.example.com", "xn--bcher-kva.example", "school.example.net")
"""Domains email-validator accepts (none special-use), an internationalised one among them."""

schemathesis.openapi.format("email", st.emails(domains=st.sampled_from(EMAIL_DOMAINS)).filter(_accepted))


@schemathesis.serializer("message/rfc822")
def _email(ctx, value) -> bytes:
    """An RSVP posted as the whole email (``replyToCheckin``): the generated value, as bytes (the
    coverage phase also sends what is no string at all, written as text; nothing for None)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")
