"""The embedded default for a channel without credentials: messages land in files.

``CARELOOP_OUTBOX_DIR`` gets ``sms.log`` (one line per text, exactly the GSM-7 body Twilio would
get), ``email/<delivery>.<attempt>.eml``
(the exact email SMTP would have carried, built by the same code) and, for invites,
``calendar/<uid>.<sequence>.ics`` (an uninvite: ``<uid>.<sequence>.<delivery>.ics``; no
calendar object is ever written over another). Files are written whole (temporary file, then
``os.replace``) so a reader never sees half a message. Unlike SMTP, the outbox can answer
:meth:`lookup`, so a retry after a crash does not write a second copy. The console echo
shows member links with their token replaced: the files hold the messages, the console
(which may end up in a log) does not hold a key to them.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from careloop.contacts import UNTEXTABLE, deliverable_phone
from careloop.gsm import to_gsm7
from careloop.integrations.base import Channel, DeliveryError
from careloop.integrations.mime import build_email, build_invite_email, parse_mail_from
from careloop.links import redact
from careloop.messages import OutgoingMessage, ProviderReceipt
from careloop.text import for_log
from careloop.vocabulary import ChannelKind

KINDS = tuple(ChannelKind)
"""Channels the outbox can stand in for."""

SMS_LOG = "sms.log"
"""Text messages, one tab-separated line each: time, delivery.attempt, to, body."""

ECHO_WIDTH = 120
"""Longest body excerpt echoed to the console."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")
_append_lock = threading.Lock()


class FileOutbox(Channel):
    """Writes messages of one ``kind`` under ``outbox_dir`` instead of sending them.

    Args:
        kind: ``sms``, ``email`` or ``calendar``.
        outbox_dir: where the files go (created when missing).
        echo: print one line per message on stdout (the operator's own console).
        mail_from: From address of outbox emails (``MAIL_FROM``).
    """

    def __init__(
        self,
        kind: str,
        outbox_dir: str | os.PathLike,
        echo: bool = True,
        *,
        mail_from: str = "careloop@localhost",
    ):
        if kind not in KINDS:
            raise ValueError(f"FileOutbox kind must be one of {KINDS}, not {kind!r}")
        self.kind = ChannelKind(kind)
        self.outbox_dir = Path(outbox_dir)
        self.echo = echo
        self.sender = parse_mail_from(mail_from)

    @classmethod
    def from_settings(cls, kind: str, settings, echo: bool = True) -> FileOutbox:
        return cls(kind, settings.outbox_dir, echo, mail_from=settings.mail_from)

    def send(self, message: OutgoingMessage) -> ProviderReceipt:
        if self.kind == ChannelKind.SMS:
            if not deliverable_phone(message.to):  # as Twilio would refuse it
                raise DeliveryError(UNTEXTABLE, permanent=True)
            body = to_gsm7(message.text)  # as TwilioSMS sends it
            path = self._append_sms(message, body)
            self._say("[sms] to {} ({}): {}", message.to_name, message.to, _excerpt(body))
            return self._receipt(path)

        if self.kind == ChannelKind.EMAIL:
            msg = build_email(message, self.sender)
        else:
            msg = build_invite_email(message, self.sender)
        path = self._eml_path(message)
        _write_atomic(path, _eml_bytes(msg))
        if self.kind == ChannelKind.CALENDAR:
            invite = message.invite
            assert invite is not None  # build_invite_email refused it otherwise
            ics_path = self.outbox_dir / "calendar" / _ics_name(message)
            # The .ics inside the .eml, byte for byte, so both files describe one iTIP message.
            # Every attendee gets the same message for one SEQUENCE (only its DTSTAMP differs):
            # the first copy stays; an uninvite is its recipient's own and has its own file.
            _write_atomic(ics_path, _calendar_part(msg), replace=False)
            self._say(
                "[calendar] {} #{} to {} <{}>: {} -> {}",
                invite.method,
                invite.sequence,
                message.to_name,
                message.to,
                _excerpt(invite.title),
                ics_path,
            )
        else:
            subject = _excerpt(message.subject)
            self._say("[email] to {} <{}>: {} -> {}", message.to_name, message.to, subject, path)
        return self._receipt(path)

    def lookup(self, message: OutgoingMessage) -> ProviderReceipt | None:
        """The receipt of any attempt of this delivery already in the outbox, else None."""
        ref = _safe(message.delivery_id)
        if self.kind == ChannelKind.SMS:
            log_path = self.outbox_dir / SMS_LOG
            try:
                with open(log_path, encoding="utf-8") as fh:
                    for line in fh:
                        fields = line.split("\t")
                        if len(fields) > 1 and fields[1].rpartition(".")[0] == ref:
                            return self._receipt(log_path)
            except FileNotFoundError:
                pass
            return None
        pattern = re.compile(rf"{re.escape(ref)}\.(\d+)\.eml")
        found = sorted(
            (int(m.group(1)), path)
            for path in (self.outbox_dir / "email").glob("*.eml")
            if (m := pattern.fullmatch(path.name))
        )
        return self._receipt(found[-1][1]) if found else None

    def _receipt(self, path: Path) -> ProviderReceipt:
        """``outbox:`` and the file's path within the outbox folder: the folder itself, a path
        on the server, is nobody's business (notebook keys read provider ids)."""
        return ProviderReceipt(provider_id=f"outbox:{path.relative_to(self.outbox_dir).as_posix()}")

    def _eml_path(self, message: OutgoingMessage) -> Path:
        return self.outbox_dir / "email" / f"{_safe(message.delivery_id)}.{int(message.attempt)}.eml"

    def _append_sms(self, message: OutgoingMessage, body: str) -> Path:
        path = self.outbox_dir / SMS_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        ref = f"{_safe(message.delivery_id)}.{int(message.attempt)}"
        line = "\t".join((stamp, ref, _field(message.to), _field(body))) + "\n"
        # One write() on an O_APPEND file: lines from several processes never interleave.
        with _append_lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        return path

    def _say(self, template: str, *values: object) -> None:
        """One console line: every value escaped, so none can start a line of its own."""
        if self.echo:
            print(template.format(*(for_log(v) for v in values)), file=sys.stdout, flush=True)


def _ics_name(message: OutgoingMessage) -> str:
    """``<uid>.<sequence>.ics`` for the message every attendee gets at that SEQUENCE (an
    occurrence's own, for a message about one occurrence); an uninvite, which lists only
    its recipient, adds the delivery: ``<uid>.<sequence>.<delivery>.ics``."""
    invite = message.invite
    assert invite is not None
    sequence = invite.occurrence.sequence if invite.occurrence is not None else invite.sequence
    name = f"{_safe(invite.uid)}.{int(sequence)}"
    if invite.uninvite:
        name += f".{_safe(message.delivery_id)}"
    return name + ".ics"


def _write_atomic(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``path`` whole (temporary file, then a rename). ``replace=False`` leaves a file
    already there as it is (a hard link never replaces its target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _eml_bytes(msg: EmailMessage) -> bytes:
    # CRLF as on the wire, so the file is exactly what an SMTP server would have received.
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _calendar_part(msg: EmailMessage) -> bytes:
    for part in msg.walk():
        if part.get_content_type() == "text/calendar":
            return part.get_payload(decode=True)
    raise DeliveryError("calendar email has no text/calendar part", permanent=True)  # pragma: no cover


def _safe(value: str) -> str:
    """A file-name-safe form of an id (no path separators, no dot-files)."""
    return _UNSAFE.sub("_", str(value)).lstrip(".") or "_"


def _field(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def _excerpt(value: str) -> str:
    text = " ".join(redact(value or "").split())
    return text if len(text) <= ECHO_WIDTH else text[: ECHO_WIDTH - 1] + "…"
