"""Two-way SMS: what a member's text back to careloop's number means.

Twilio's opt-out keywords set the member's SMS opt-out (texts to them are then ``skipped``,
reason ``opted_out``) and its opt-in keywords clear it; HELP gets a short help text; any other
text from a known member becomes a ``note.added`` on their notebook, authored by them and
routed as usual — except "OK" or "1" while the member has an alert waiting for an
acknowledgement (``careloop.escalation``): that acknowledges their most recent one. A number
careloop does not know records nothing.

Keywords match as Twilio matches them: the whole message, trimmed, in any case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from careloop import escalation
from careloop.events import EVENT_KINDS, EventType
from careloop.intake import IdempotencyConflict, record_event
from careloop.models import Delivery, Member, Notebook
from careloop.vocabulary import ChannelKind, Role

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
"""Twilio's default opt-out keywords: the member gets no more texts."""

OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
"""Twilio's default opt-in keywords: texts resume."""

HELP_KEYWORDS = frozenset({"HELP", "INFO"})
"""Twilio's default help keywords."""

ACKNOWLEDGE_KEYWORDS = frozenset({"OK", "1"})
"""Replies that acknowledge the member's latest alert (:func:`acknowledge_latest_alert`); with
nothing to acknowledge they are kept as notes."""

HELP_TEXT = (
    "careloop: texts about your child's care notebook. Reply STOP to stop texts, START to resume. "
    "Any other reply is added to the notebook as a note."
)
NOTE_ADDED_TEXT = "careloop: thanks, your note was added to the care notebook."
ACKNOWLEDGED_TEXT = "careloop: thanks, acknowledged. The care team can see you have it."
OPTED_IN_TEXT = "careloop: texts are back on. Reply STOP to stop them."

NOTE_MAX = 2000
"""Characters of a text kept in a note (a note's limit; an SMS reply is at most 1600)."""

_NOT_PROSE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ReplyKind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    NOTE = "note"
    ACKNOWLEDGED = "acknowledged"
    UNKNOWN_NUMBER = "unknown_number"


@dataclass(frozen=True)
class Reply:
    """What a text did: its kind, the text to answer with (None: no answer), the note's event."""

    kind: ReplyKind
    answer: str | None = None
    event_id: str | None = None
    created: bool = False
    notebook_ids: tuple[str, ...] = ()
    """The notebooks of the members with that number (whose audit log shows the text)."""


def keyword(body: str) -> str:
    return body.strip().upper()


def _members(session: Session, phone: str) -> list[Member]:
    return list(
        session.scalars(
            select(Member).where(Member.phone == phone, Member.active.is_(True)).order_by(Member.created_at)
        )
    )


def _author(session: Session, members: list[Member]) -> Member:
    """Of the members with this number (a parent of two children has two), the one careloop
    last texted: the reply is most likely about that notebook."""
    if len(members) == 1:
        return members[0]
    last = dict(
        session.execute(
            select(Delivery.member_id, func.max(Delivery.created_at))
            .where(Delivery.member_id.in_([m.id for m in members]), Delivery.channel == ChannelKind.SMS)
            .group_by(Delivery.member_id)
        ).all()
    )
    return max(members, key=lambda m: (last.get(m.id) is not None, last.get(m.id) or m.created_at))


def _voice(role: str) -> str:
    if role == Role.CHILD:
        return "child"
    return "family" if role in (Role.PARENT, Role.GUARDIAN) else "team"


def _note_text(body: str) -> str:
    return _NOT_PROSE.sub(" ", body)[:NOTE_MAX]


def acknowledge_latest_alert(session: Session, member: Member) -> bool:
    """Acknowledge ``member``'s most recent unacknowledged alert — sent in the last day, of an
    event that waits (or waited) for an acknowledgement — and return True; the event's
    escalation stops. False when there is none: the "OK" is then kept as a note."""
    alert = escalation.latest_unacknowledged_alert(session, member.id)
    if alert is None:
        return False
    escalation.acknowledge(session, alert, member.id, escalation.AckVia.SMS)
    return True


def set_sms_opt_out(session: Session, phone: str, opted_out: bool) -> int:
    """Every member with this number (Twilio's opt-out is per number); returns how many."""
    result = session.execute(
        update(Member)
        .where(Member.phone == phone)
        .values(sms_opted_out=opted_out)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def handle_reply(session: Session, phone: str, body: str, message_id: str) -> Reply:
    """Act on one text from ``phone`` (E.164). ``message_id`` (Twilio's MessageSid) makes a
    repeated webhook for the same text add its note once."""
    members = _members(session, phone)
    if not members:
        return Reply(ReplyKind.UNKNOWN_NUMBER)
    word = keyword(body)
    notebooks = tuple(dict.fromkeys(m.notebook_id for m in members))
    if word in OPT_OUT_KEYWORDS:
        set_sms_opt_out(session, phone, True)
        return Reply(ReplyKind.OPT_OUT, notebook_ids=notebooks)  # Twilio answers STOP itself
    if word in OPT_IN_KEYWORDS:
        set_sms_opt_out(session, phone, False)
        return Reply(ReplyKind.OPT_IN, OPTED_IN_TEXT, notebook_ids=notebooks)
    if word in HELP_KEYWORDS:
        return Reply(ReplyKind.HELP, HELP_TEXT, notebook_ids=notebooks)
    author = _author(session, members)
    if word in ACKNOWLEDGE_KEYWORDS:
        for member in sorted(members, key=lambda m: m.id != author.id):  # the author's first
            if acknowledge_latest_alert(session, member):
                return Reply(ReplyKind.ACKNOWLEDGED, ACKNOWLEDGED_TEXT, notebook_ids=(member.notebook_id,))
    notebook = session.get(Notebook, author.notebook_id)
    text = _note_text(body)
    try:
        data = EVENT_KINDS[EventType.NOTE_ADDED].data(text=text, voice=_voice(author.role))
    except ValidationError:  # blank (a text of spaces): nothing to note
        return Reply(ReplyKind.HELP, HELP_TEXT, notebook_ids=(author.notebook_id,))
    try:
        event, created = record_event(
            session,
            notebook,
            event_type=EventType.NOTE_ADDED,
            data=data.model_dump(mode="json", exclude_none=True),
            occurred_at=None,
            author_member_id=author.id,
            idempotency_key=f"twilio-sms:{message_id}",
        )
    except IdempotencyConflict:  # Twilio sent this text before and careloop noted it then
        return Reply(ReplyKind.NOTE, NOTE_ADDED_TEXT, notebook_ids=(author.notebook_id,))
    return Reply(ReplyKind.NOTE, NOTE_ADDED_TEXT, event.id, created, (author.notebook_id,))
