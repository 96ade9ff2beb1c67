"""PHI-minimal messages: every message kind rendered for every role with the demo's data.

Texts and email subjects never carry a medication, a dose, a concern's words, a note or
any other detail; email bodies carry details only where the notebook turns ``email_detail``
on, and then only what the recipient's role may see (config/policy.yaml). Texts are GSM-7
(names in any script transliterated) and fit one 160-character segment where the link
allows; the outbox's sms.log holds exactly the text Twilio gets."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime, timedelta

import pytest

from careloop.config.settings import DEFAULT_POLICY_FILE
from careloop.demo import TEAM, demo_events
from careloop.events import CHECKIN_TYPES, EVENT_DATA
from careloop.gsm import SEGMENT, gsm7_length, is_gsm7, to_gsm7
from careloop.integrations.file_outbox import SMS_LOG, FileOutbox
from careloop.integrations.mime import build_email, build_invite_email, parse_mail_from
from careloop.messages import MemberLink, NotebookView, Recipient, render, sms_text
from careloop.policy import load_policy
from careloop.vocabulary import ChannelKind, Role
from tests.test_sms_twilio import make_sms

POLICY = load_policy(DEFAULT_POLICY_FILE)
NOTEBOOK = NotebookView(id="nb_demo", child_name="Maya Rivera", timezone="America/Chicago")
MAIL_FROM = "careloop <careloop@example.org>"
LINK = MemberLink(
    url="https://careloop.example.org/m/" + "A" * 24 + "." + "B" * 22,
    expires_at=datetime(2027, 1, 12, 18, 0, tzinfo=UTC),
)

# The demo's team, and someone for every role it lacks (names in several scripts).
MEMBER_IDS = {name: f"mem_{i:020x}" for i, (name, *_rest) in enumerate(TEAM)}
RECIPIENTS = {role: Recipient(MEMBER_IDS[name], name, email, phone) for name, role, email, phone in TEAM}
for role, name in (
    (Role.GUARDIAN, "Zoë Nguyễn"),
    (Role.CHILD, "Maya Rivera"),
    (Role.DEVELOPMENTAL_PEDIATRICS, "Dr. Мария Петрова"),
    (Role.OCCUPATIONAL_THERAPY, "李明"),
    (Role.OTHER, "Grandpa Σωκράτης"),
):
    RECIPIENTS[role.value] = Recipient(f"mem_{role.value}", name, f"{role.value}@example.org", "+15555550199")
assert set(RECIPIENTS) == {r.value for r in Role}


def _events() -> list[dict]:
    """The demo's three events, then one of every other type, as the API stores them."""
    events = demo_events(MEMBER_IDS, now=datetime(2026, 11, 29, 12, tzinfo=UTC))
    checkin = dict(events[2]["data"])
    moved = {**checkin, "title": "IEP team meeting (moved)", "location": "Lincoln Elementary, library"}
    events += [
        {"type": "therapy.logged",
         "data": {"discipline": "speech_therapy", "minutes": 30, "activity": "Chin-tuck swallow drills",
                  "note": "Still coughs on water"}},
        {"type": "goal.updated", "data": {"goal": "Drinks from an open cup without coughing",
                                          "status": "progress", "note": "Eight of ten sips"}},
        {"type": "note.added",
         "data": {"text": "The new medicine makes me sleepy at school", "voice": "child"}},
        {"type": "checkin.updated", "data": moved},
        {"type": "checkin.cancelled", "data": {"checkin_id": checkin["checkin_id"]}},
        {"type": "concern.raised",
         "data": {"summary": "Absence seizures twice in class", "severity": "medium", "area": "seizure"}},
    ]  # fmt: skip
    for event in events:
        if event["type"] in CHECKIN_TYPES:
            snapshot = moved if event["type"] != "checkin.scheduled" else checkin
            event["context"] = {"checkin": {"uid": "iep@careloop", "sequence": 1, **snapshot}}
    return events


EVENTS = _events()
assert {e["type"] for e in EVENTS} == set(EVENT_DATA), "every event type"

NOT_DETAILS = (
    "change", "severity", "status", "voice", "discipline", "checkin_id", "attendees", "start", "end",
    "minutes",
)  # fmt: skip
"""Fields whose values are kinds, ids and times, not words of the update."""


def details_of(event: dict) -> dict[str, str]:
    """field → text of every detail the event holds (what may never reach a text or subject)."""
    data = {**(event.get("context", {}).get("checkin") or {}), **event["data"]}
    # a concern's area ("seizure", "swallowing") counts: it says what is wrong
    return {k: str(v) for k, v in data.items() if k not in NOT_DETAILS and isinstance(v, str) and k != "uid"}


EVERY_DETAIL = sorted({text for event in EVENTS for text in details_of(event).values()})
assert "levetiracetam" in EVERY_DETAIL and "250 mg twice daily" in EVERY_DETAIL and "seizure" in EVERY_DETAIL


def render_all(email_detail: bool):
    """(event, role, message) for every event, every role, every channel the event can use."""
    for event in EVENTS:
        channels = [ChannelKind.SMS, ChannelKind.EMAIL]
        if event["type"] in CHECKIN_TYPES:
            channels.append(ChannelKind.CALENDAR)
        for role, recipient in RECIPIENTS.items():
            visible = POLICY.visible_fields(role, event["type"], event["data"]) if email_detail else ()
            for channel in channels:
                message = render(
                    delivery_id="dlv_" + "0" * 20,
                    attempt=1,
                    channel=channel,
                    event_type=event["type"],
                    data=event["data"],
                    context=event.get("context", {}),
                    notebook=NOTEBOOK,
                    recipient=recipient,
                    attendees=list(RECIPIENTS.values()),
                    link=LINK,
                    detail_fields=visible,
                    mail_from=MAIL_FROM,
                )
                yield event, role, visible, message


def wire_text(message) -> str:
    """Everything an email puts on the wire (headers, text, HTML, invite), decoded."""
    sender = parse_mail_from(MAIL_FROM)
    built = build_invite_email(message, sender) if message.invite else build_email(message, sender)
    parts = [str(v) for _, v in built.items()]
    for part in built.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            parts.append(payload.decode("utf-8") if payload else "")
    return "\n".join(parts)


def test_texts_and_subjects_never_carry_a_detail_for_any_role_or_kind():
    rendered = 0
    for email_detail in (False, True):
        for event, role, _visible, message in render_all(email_detail):
            rendered += 1
            shown = message.text if message.channel == ChannelKind.SMS else message.subject
            assert shown.strip()
            for detail in EVERY_DETAIL:
                where = (event["type"], role, message.channel, detail, shown)
                assert detail.lower() not in shown.lower(), where
            if message.channel == ChannelKind.SMS:
                assert message.text.startswith("careloop: ") and LINK.url in message.text
                assert is_gsm7(message.text) and gsm7_length(message.text) <= SEGMENT, message.text
            else:
                assert "Maya" in message.subject
                subject = email.policy.default.header_factory("Subject", message.subject)
                assert "\n" not in str(subject)
    assert rendered == 2 * len(RECIPIENTS) * (2 * len(EVENTS) + 3)


def test_email_bodies_carry_no_detail_unless_the_notebook_turns_it_on():
    for event, role, _visible, message in render_all(email_detail=False):
        if message.channel == ChannelKind.SMS:
            continue
        body = wire_text(message)
        invite_fields = ("title", "location") if message.channel == ChannelKind.CALENDAR else ()
        for field, detail in details_of(event).items():
            if field in invite_fields:
                continue  # an invite is its title, time and place
            assert detail not in body, (event["type"], role, message.channel, detail)
        assert LINK.url in message.text and LINK.url in (message.html or "")
        assert "works until 12 Jan 2027" in message.text


def test_with_email_detail_an_email_carries_what_the_role_may_see_and_nothing_more():
    seen_by = {}
    for event, role, visible, message in render_all(email_detail=True):
        if message.channel != ChannelKind.EMAIL:
            continue
        body = wire_text(message)
        details = details_of(event)
        shown = [details[f] for f in visible if f in details]
        for field, detail in details.items():
            if field in visible:
                assert detail in message.text, (event["type"], role, field)
                seen_by.setdefault(detail, set()).add(role)
            elif not any(detail in text for text in shown):  # not part of a detail it may see
                assert detail not in body, (event["type"], role, field, detail)
    # the table at work: only the prescribers and the family see a medication...
    assert seen_by["levetiracetam"] == {"parent", "guardian", "neurology", "developmental_pediatrics"}
    # ...the whole clinical team an urgent concern, never the school; the school its own area
    urgent = "Coughing and choking on thin liquids at dinner"
    assert seen_by[urgent] == {r.value for r in Role} - {"school", "child", "other"}
    assert "school" in seen_by["The new medicine makes me sleepy at school"]
    assert "school" not in seen_by["Absence seizures twice in class"]


@pytest.mark.parametrize(
    "child, spelled",
    [
        ("Zoë Ruiz", "Zoe's"),
        ("Nguyễn Thị Lan", "Nguyen's"),
        ("Мария Иванова", "Mariya's"),
        ("李明", "LiMing's"),
        ("محمد علي", "mhmd's"),
        ("Σωκράτης Παππάς", "Sokratis's"),
        ("José Ñúñez", "José's"),  # GSM-7 has é: kept
    ],
)
def test_names_in_any_script_are_transliterated_to_gsm7(child, spelled):
    notebook = NotebookView(id="nb", child_name=child, timezone="UTC")
    message = render(
        delivery_id="dlv_" + "0" * 20, attempt=1, channel="sms", event_type="goal.updated",
        data={"goal": "g", "status": "met"}, context={}, notebook=notebook,
        recipient=Recipient("mem_1", "Ana", None, "+15555550100"), attendees=[], link=LINK,
        detail_fields=(), mail_from=MAIL_FROM,
    )  # fmt: skip
    assert is_gsm7(message.text), message.text
    assert f"in {spelled} care notebook" in message.text
    assert len(message.text) <= SEGMENT


def test_a_text_falls_back_to_shorter_wording_to_stay_in_one_segment():
    label = "an URGENT concern"
    short_url = "https://careloop.example.org/m/" + "x" * 24 + "." + "y" * 22
    first = f"careloop: an URGENT concern in Maya's care notebook. Details: {short_url}"
    assert sms_text(label, "Maya", short_url) == first and len(first) <= SEGMENT
    long_url = "https://care.childrens-hospital.example.org/careloop/m/" + "x" * 24 + "." + "y" * 22
    text = sms_text(label, "Maya", long_url)
    assert text == f"careloop: an URGENT concern for Maya: {long_url}" and len(text) <= SEGMENT
    longer = "https://care.childrens-hospital-of-somewhere.example.org/careloop/" + "m/" + "x" * 47
    text = sms_text(label, "Maximiliana-Josephine", longer)
    assert text == f"careloop: an URGENT concern: {longer}" and len(text) <= SEGMENT
    absurd = "https://" + "a" * 200 + ".example.org/m/token"
    assert sms_text(label, "Maya", absurd) == f"careloop: an URGENT concern: {absurd}", "the shortest form"


def test_to_gsm7_keeps_gsm_text_and_is_idempotent():
    text = "Check-in: Tue 10:00 @ Clinic (room 4) - Ada's team. Ñandu? é è ü"
    assert to_gsm7(text) == text
    assert to_gsm7("\u201cZoë\u201d \u2013 Nguyễn\u2026") == '"Zoe" - Nguyen...'
    assert to_gsm7(to_gsm7("Мария")) == to_gsm7("Мария") == "Mariya"


def test_sms_log_holds_exactly_the_text_twilio_gets(tmp_path, twilio_proxy):
    """The same message through the outbox and through Twilio (Prism): the same body."""
    notebook = NotebookView(id="nb", child_name="Zoë Nguyễn", timezone="UTC")
    message = render(
        delivery_id="dlv_" + "1" * 20, attempt=1, channel="sms", event_type="concern.raised",
        data={"summary": "s", "severity": "urgent"}, context={}, notebook=notebook,
        recipient=Recipient("mem_1", "Ana", None, "+15557654321"), attendees=[], link=LINK,
        detail_fields=(), mail_from=MAIL_FROM, created_at=datetime.now(UTC) - timedelta(seconds=1),
    )  # fmt: skip
    # a hand-made message with characters that are not GSM-7 goes the same way through both
    from dataclasses import replace

    raw = replace(message, delivery_id="dlv_" + "2" * 20, text="Zoë\u2019s \u201ccheck-in\u201d \u2013 Мария")
    outbox = FileOutbox("sms", tmp_path, echo=False)
    twilio = make_sms(twilio_proxy.url)
    for sent in (message, raw):
        outbox.send(sent)
        twilio.send(sent)
    logged = [line.split("\t")[3] for line in (tmp_path / SMS_LOG).read_text(encoding="utf-8").splitlines()]
    assert logged == [s["Body"] for s in twilio_proxy.sent]
    assert logged[0] == f"careloop: an URGENT concern in Zoe's care notebook. Details: {LINK.url}"
    assert logged[1] == "Zoe's \"check-in\" - Mariya"


def test_a_digest_names_each_event_by_kind_and_time_never_by_what_it_says():
    """Every event type in one daily digest, for every role, by text and by email: no detail
    on the wire, each event's own link in the email, the newest three in the text."""
    from careloop.messages import DIGEST_SMS_LINKS, DigestItem, render_digest

    items = [
        DigestItem(
            event_type=event["type"],
            data=event["data"],
            occurred_at=datetime(2026, 11, 29, 12, tzinfo=UTC) + timedelta(minutes=i),
            link=MemberLink(url=f"{LINK.url[:-3]}{i:03d}", expires_at=LINK.expires_at),
        )
        for i, event in enumerate(EVENTS)
    ]
    for recipient in RECIPIENTS.values():
        for channel in (ChannelKind.SMS, ChannelKind.EMAIL):
            message = render_digest(
                digest_id="dig_" + "0" * 20,
                attempt=1,
                channel=channel,
                notebook=NOTEBOOK,
                recipient=recipient,
                items=items,
                window="2026-11-29",
            )
            wire = message.text if channel == ChannelKind.SMS else wire_text(message)
            for detail in EVERY_DETAIL:
                assert detail not in wire, (channel, recipient.name, detail)
            if channel == ChannelKind.SMS:
                assert is_gsm7(message.text) and "Maya's daily digest" in message.text
                assert [i.link.url in message.text for i in items].count(True) == DIGEST_SMS_LINKS
                assert items[-1].link.url in message.text  # the newest
            else:
                assert message.subject == f"Daily digest for Maya, Sun 29 Nov: {len(items)} updates"
                assert all(i.link.url in message.text for i in items)
    with pytest.raises(ValueError, match="empty digest"):
        render_digest(
            digest_id="dig_x", attempt=1, channel="email", notebook=NOTEBOOK,
            recipient=RECIPIENTS["parent"], items=[], window="2026-11-29",
        )  # fmt: skip
