"""Email and calendar channels against real peers: aiosmtpd (SMTP) and Radicale (CalDAV)."""

from __future__ import annotations

import base64
import email
import email.policy
import http.client
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar

from careloop.config.settings import Settings
from careloop.integrations.base import DeliveryError, NotConfigured, OutcomeUnknown
from careloop.integrations.calendar_invite import build_invite
from careloop.integrations.email_smtp import CalendarEmail, SmtpEmail
from careloop.integrations.file_outbox import FileOutbox
from careloop.messages import Attendee, CalendarInvite, OutgoingMessage
from tests.conftest import wait_until
from tests.peers.smtp_peer import PEER_PASSWORD, PEER_USERNAME

MAIL_FROM = "careloop <careloop@example.org>"
START = datetime(2025, 6, 2, 15, 0, tzinfo=UTC)  # 17:00 in Berlin (CEST)


def make_invite(**changes) -> CalendarInvite:
    invite = CalendarInvite(
        method="REQUEST",
        uid="checkin-42@careloop",
        sequence=0,
        title="Weekly check-in",
        start=START,
        end=START + timedelta(minutes=45),
        tzid="Europe/Berlin",
        organizer=Attendee("Ana Organiser", "ana@example.org"),
        attendees=(Attendee("Dr. Zoë Ruiz", "zoe@example.net"), Attendee("Sam Lee", "sam@example.net")),
        location="Room 3",
        description="Bring the notebook.",
    )
    return replace(invite, **changes)


def make_message(channel: str = "email", **changes) -> OutgoingMessage:
    message = OutgoingMessage(
        delivery_id="dlv-7",
        attempt=1,
        channel=channel,
        to="zoe@example.net",
        to_name="Dr. Zoë Ruiz",
        subject="New note in Mia's notebook",
        text="A new note was added.",
        html="<p>A new note was <b>added</b>.</p>",
        invite=make_invite() if channel == "calendar" else None,
    )
    return replace(message, **changes)


@pytest.fixture
def mailer(smtp) -> SmtpEmail:
    return SmtpEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=5)


def calendar_part(msg):
    parts = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1
    return parts[0]


def parse_ics(data: bytes):
    cal = Calendar.from_ical(data)
    (event,) = cal.walk("VEVENT")
    return cal, event


# --- email --------------------------------------------------------------------------------


def test_email_arrives_with_text_html_and_headers(smtp, mailer):
    receipt = mailer.send(make_message())

    (got,) = smtp.wait_for(1)
    assert got.mail_from == "careloop@example.org"
    assert got.rcpt_tos == ["zoe@example.net"]
    msg = got.message
    assert msg["From"].addresses[0].addr_spec == "careloop@example.org"
    assert msg["To"].addresses[0].display_name == "Dr. Zoë Ruiz"
    assert msg["To"].addresses[0].addr_spec == "zoe@example.net"
    assert msg["Subject"] == "New note in Mia's notebook"
    assert msg["Date"].datetime is not None
    assert msg["Message-ID"] == "<dlv-7.1@example.org>"
    assert receipt.provider_id == "<dlv-7.1@example.org>" and receipt.status == "sent"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "A new note was added."
    assert msg.get_body(("html",)).get_content().strip() == "<p>A new note was <b>added</b>.</p>"


def test_email_without_html_is_plain_text(smtp, mailer):
    mailer.send(make_message(html=None))
    (msg,) = smtp.messages
    assert msg.get_content_type() == "text/plain"


def test_message_id_is_stable_per_delivery_attempt(smtp, mailer):
    first = mailer.send(make_message(attempt=1))
    again = mailer.send(make_message(attempt=1))
    retry = mailer.send(make_message(attempt=2))
    other = mailer.send(make_message(delivery_id="dlv-8"))

    assert first.provider_id == again.provider_id == "<dlv-7.1@example.org>"
    assert retry.provider_id == "<dlv-7.2@example.org>"
    assert other.provider_id == "<dlv-8.1@example.org>"
    assert [m["Message-ID"] for m in smtp.messages] == [
        first.provider_id,
        again.provider_id,
        retry.provider_id,
        other.provider_id,
    ]


def test_header_values_cannot_break_lines(smtp, mailer):
    mailer.send(make_message(subject="Hi\r\nBcc: evil@example.com", to_name="Zoë\nX-Evil: 1"))
    (msg,) = smtp.messages
    assert msg["Subject"] == "Hi Bcc: evil@example.com"
    assert msg["Bcc"] is None and msg["X-Evil"] is None


def test_451_is_transient_then_the_retry_is_sent(smtp, mailer):
    smtp.script("451 4.3.0 Try again later")

    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message(attempt=1))
    assert failed.value.permanent is False
    assert failed.value.reason == "SMTP 451 4.3.0 Try again later"
    assert smtp.messages == []

    receipt = mailer.send(make_message(attempt=2))
    assert receipt.provider_id == "<dlv-7.2@example.org>"
    assert [m["Message-ID"] for m in smtp.messages] == ["<dlv-7.2@example.org>"]
    assert smtp.data_count == 2


def test_550_is_permanent_with_the_servers_reply_and_no_content(smtp, mailer):
    smtp.fail_always("550 5.1.1 Mailbox unavailable")

    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.permanent is True
    assert failed.value.reason == "SMTP 550 5.1.1 Mailbox unavailable"
    assert "note" not in failed.value.reason.lower()
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("reply", "permanent"),
    [("450 4.2.1 Mailbox busy", False), ("550 5.1.1 No such user", True)],
)
def test_refused_recipient_maps_by_reply_class(smtp, mailer, reply, permanent):
    smtp.script_rcpt(reply)

    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.permanent is permanent
    assert failed.value.reason == f"SMTP {reply}"
    assert smtp.data_count == 0


def test_connection_refused_is_transient():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mailer = SmtpEmail("127.0.0.1", port, starttls=False, mail_from=MAIL_FROM, timeout=2)

    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.permanent is False
    assert "refused" in failed.value.reason


def test_slow_server_times_out_as_transient_but_has_the_message(smtp):
    smtp.delay = 3
    mailer = SmtpEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=0.5)

    began = time.monotonic()
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert time.monotonic() - began < 2
    assert failed.value.permanent is False
    # The server took the message before answering: why SMTP's outcome can be unknown.
    assert [m["Message-ID"] for m in smtp.messages] == ["<dlv-7.1@example.org>"]
    with pytest.raises(OutcomeUnknown):
        mailer.lookup(make_message())


def test_an_answer_lost_after_the_whole_message_is_outcome_unknown(smtp):
    smtp.delay = 3
    mailer = SmtpEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=0.5)
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.maybe_sent is True and "outcome unknown" in failed.value.reason


def test_a_data_command_never_answered_sent_nothing_and_is_an_ordinary_retry(smtp):
    """The server took MAIL and RCPT, then never answered DATA: the message never left
    careloop, so this is a plain transient error — never "outcome unknown"."""
    smtp.swallow_data(6)
    # a timeout the server's other answers fit in even on a loaded machine: only DATA goes unanswered
    mailer = SmtpEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=2.0)
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert smtp.swallowed == 1 and smtp.messages == []
    assert failed.value.permanent is False
    assert failed.value.maybe_sent is False
    assert "outcome unknown" not in failed.value.reason


def test_a_refused_connection_is_never_outcome_unknown(smtp):
    mailer = SmtpEmail("127.0.0.1", _closed_port(), starttls=False, mail_from=MAIL_FROM, timeout=0.5)
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.maybe_sent is False and failed.value.permanent is False


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_connection_carries_many_messages(smtp, mailer):
    for attempt in range(1, 4):
        mailer.send(make_message(attempt=attempt))
    assert len(smtp.messages) == 3 and smtp.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_message_sent_once(smtp, mailer):
    mailer.send(make_message(attempt=1))
    smtp.hang_up_all()
    wait_until(lambda: not smtp._sessions, timeout=5, message="the server to hang up")
    receipt = mailer.send(make_message(attempt=2))
    assert receipt.status == "sent"
    assert [m["Message-ID"] for m in smtp.messages] == ["<dlv-7.1@example.org>", "<dlv-7.2@example.org>"]
    assert smtp.connections == 2


def test_a_slow_quit_after_acceptance_is_still_sent(smtp):
    smtp.quit_delay = 3
    mailer = SmtpEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=0.5)

    receipt = mailer.send(make_message())
    assert receipt.status == "sent"
    assert len(smtp.messages) == 1


def test_login_when_a_username_is_set(smtp):
    mailer = SmtpEmail(
        smtp.host,
        smtp.port,
        username=PEER_USERNAME,
        password=PEER_PASSWORD,
        starttls=False,
        mail_from=MAIL_FROM,
        timeout=5,
    )
    mailer.send(make_message())
    assert smtp.logins == [PEER_USERNAME]
    assert smtp.received[0].login == PEER_USERNAME
    assert PEER_PASSWORD not in repr(mailer)


def test_wrong_password_is_permanent(smtp):
    mailer = SmtpEmail(
        smtp.host,
        smtp.port,
        username=PEER_USERNAME,
        password="wrong",
        starttls=False,
        mail_from=MAIL_FROM,
        timeout=5,
    )
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.permanent is True
    assert failed.value.reason.startswith("SMTP 535")
    assert "SMTP_PASSWORD" in failed.value.reason
    assert smtp.messages == []


def test_required_starttls_missing_on_the_server_is_permanent(smtp):
    mailer = SmtpEmail(smtp.host, smtp.port, starttls=True, mail_from=MAIL_FROM, timeout=5)
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message())
    assert failed.value.permanent is True
    assert "STARTTLS" in failed.value.reason
    assert smtp.data_count == 0


def test_bad_recipient_is_refused_before_any_connection(smtp, mailer):
    with pytest.raises(DeliveryError) as failed:
        mailer.send(make_message(to="not-an-address"))
    assert failed.value.permanent is True
    assert smtp.data_count == 0


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "SMTP_HOST"),
        ({"smtp_host": "127.0.0.1", "mail_from": "careloop"}, "MAIL_FROM"),
        ({"smtp_host": "127.0.0.1", "smtp_username": "u"}, "SMTP_PASSWORD"),
    ],
)
def test_bad_configuration_names_the_setting(settings, named):
    with pytest.raises(NotConfigured) as failed:
        SmtpEmail.from_settings(Settings(**settings))
    assert named in failed.value.reason


def test_from_settings_uses_the_settings(smtp):
    settings = Settings(
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        smtp_starttls=False,
        mail_from="Care Loop <noreply@care.example>",
        provider_timeout=3,
    )
    mailer = SmtpEmail.from_settings(settings)
    receipt = mailer.send(make_message())
    assert receipt.provider_id == "<dlv-7.1@care.example>"
    assert smtp.messages[0]["From"].addresses[0].display_name == "Care Loop"
    assert mailer.timeout == 3


def test_peer_takes_mail_from_another_process(smtp):
    script = textwrap.dedent(f"""
        import smtplib
        with smtplib.SMTP("{smtp.host}", {smtp.port}, timeout=5) as s:
            s.sendmail("a@example.org", ["b@example.org"], "Subject: from a child\\r\\n\\r\\nhi\\r\\n")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)
    (got,) = smtp.wait_for(1)
    assert got.message["Subject"] == "from a child"


# --- calendar -----------------------------------------------------------------------------


@pytest.fixture
def calendar(smtp) -> CalendarEmail:
    return CalendarEmail(smtp.host, smtp.port, starttls=False, mail_from=MAIL_FROM, timeout=5)


def test_invite_arrives_as_imip_request(smtp, calendar):
    receipt = calendar.send(make_message("calendar"))

    (msg,) = smtp.messages
    assert receipt.provider_id == msg["Message-ID"] == "<dlv-7.1@example.org>"
    assert msg.get_body(("plain",)).get_content().strip() == "A new note was added."
    assert "<b>added</b>" in msg.get_body(("html",)).get_content()
    part = calendar_part(msg)
    assert part.get_param("method") == "REQUEST"
    assert part.get_content_charset() == "utf-8"
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/ics"
    assert attachment.get_filename() == "invite.ics"
    assert attachment.get_content() == part.get_payload(decode=True)

    cal, event = parse_ics(part.get_payload(decode=True))
    assert cal["METHOD"] == "REQUEST"
    assert cal["VERSION"] == "2.0" and "careloop" in cal["PRODID"]
    assert str(event["UID"]) == "checkin-42@careloop"
    assert event["SEQUENCE"] == 0
    assert event["SUMMARY"] == "Weekly check-in"
    assert event["LOCATION"] == "Room 3"
    assert event["DESCRIPTION"] == "Bring the notebook."
    assert event["DTSTAMP"].dt.tzinfo is not None
    organizer = event["ORGANIZER"]
    assert str(organizer).lower() == "mailto:ana@example.org"
    assert organizer.params["CN"] == "Ana Organiser"
    attendees = {str(a).lower(): a.params for a in event["ATTENDEE"]}
    assert set(attendees) == {"mailto:zoe@example.net", "mailto:sam@example.net"}
    zoe = attendees["mailto:zoe@example.net"]
    assert zoe["CN"] == "Dr. Zoë Ruiz"
    assert (zoe["ROLE"], zoe["RSVP"], zoe["PARTSTAT"], zoe["CUTYPE"]) == (
        "REQ-PARTICIPANT",
        "TRUE",
        "NEEDS-ACTION",
        "INDIVIDUAL",
    )
    assert event["DTSTART"].params["TZID"] == "Europe/Berlin"
    assert event["DTEND"].params["TZID"] == "Europe/Berlin"
    assert event.start.replace(tzinfo=None) == datetime(2025, 6, 2, 17, 0)  # shown in Berlin
    assert event.start == START and event.end == START + timedelta(minutes=45)
    (vtimezone,) = cal.walk("VTIMEZONE")
    assert vtimezone["TZID"] == "Europe/Berlin"
    assert vtimezone.to_tz().utcoffset(datetime(2025, 6, 2, 17)) == timedelta(hours=2)
    assert vtimezone.to_tz().utcoffset(datetime(2025, 12, 2, 17)) == timedelta(hours=1)


def test_update_keeps_uid_and_raises_sequence(smtp, calendar):
    calendar.send(make_message("calendar"))
    moved = make_invite(sequence=1, start=START + timedelta(days=1), end=START + timedelta(days=1, hours=1))
    calendar.send(make_message("calendar", attempt=1, delivery_id="dlv-9", invite=moved))

    first, second = (parse_ics(calendar_part(m).get_payload(decode=True))[1] for m in smtp.messages)
    assert first["UID"] == second["UID"] == "checkin-42@careloop"
    assert (first["SEQUENCE"], second["SEQUENCE"]) == (0, 1)
    assert second.start == START + timedelta(days=1)


def test_cancel_says_cancel_everywhere(smtp, calendar):
    calendar.send(make_message("calendar", invite=make_invite(method="CANCEL", sequence=2)))

    (msg,) = smtp.messages
    part = calendar_part(msg)
    assert part.get_param("method") == "CANCEL"
    cal, event = parse_ics(part.get_payload(decode=True))
    assert cal["METHOD"] == "CANCEL"
    assert event["STATUS"] == "CANCELLED"
    assert event["SEQUENCE"] == 2
    assert all("RSVP" not in a.params for a in event["ATTENDEE"])  # nothing to answer


def test_calendar_shares_the_smtp_error_mapping(smtp, calendar):
    smtp.script("451 4.7.1 Greylisted")
    with pytest.raises(DeliveryError) as failed:
        calendar.send(make_message("calendar"))
    assert (failed.value.permanent, failed.value.reason) == (False, "SMTP 451 4.7.1 Greylisted")

    smtp.fail_always("554 5.7.1 Rejected")
    with pytest.raises(DeliveryError) as failed:
        calendar.send(make_message("calendar", attempt=2))
    assert (failed.value.permanent, failed.value.reason) == (True, "SMTP 554 5.7.1 Rejected")


def test_unknown_time_zone_is_permanent_and_sends_nothing(smtp, calendar):
    with pytest.raises(DeliveryError) as failed:
        calendar.send(make_message("calendar", invite=make_invite(tzid="Mars/Olympus")))
    assert failed.value.permanent is True
    assert smtp.data_count == 0


def test_invite_after_2038_still_gets_a_working_vtimezone():
    later = datetime(2041, 1, 10, 15, tzinfo=UTC)
    cal, event = parse_ics(
        build_invite(make_invite(start=later, end=later + timedelta(hours=1), tzid="America/New_York"))
    )
    assert event.start == later
    assert event.start.astimezone(ZoneInfo("America/New_York")).hour == 10
    (vtimezone,) = cal.walk("VTIMEZONE")
    assert vtimezone.to_tz().utcoffset(datetime(2041, 1, 10, 10)) == timedelta(hours=-5)


# --- Radicale: an independent iCalendar parser (vobject) ----------------------------------


class Radicale:
    def __init__(self, port: int):
        self.port = port
        self.auth = {"Authorization": "Basic " + base64.b64encode(b"careloop:x").decode()}

    def request(self, method: str, path: str, body: bytes | None = None, **headers) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={**self.auth, **headers})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def radicale(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("radicale")
    log = open(folder.parent / f"radicale-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radicale",
            "--server-hosts",
            f"127.0.0.1:{port}",
            "--auth-type",
            "none",
            "--storage-filesystem-folder",
            str(folder),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Radicale(port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                server.request("GET", "/.well-known/caldav")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Radicale did not start") from None
                time.sleep(0.1)
        status, _ = server.request("MKCALENDAR", "/careloop/team/")
        assert status == 201
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_radicale_stores_request_update_and_cancel(radicale):
    # Radicale 3.9 accepts METHOD in a stored object, so the iTIP object goes in unchanged.
    for n, invite in enumerate(
        [make_invite(), make_invite(sequence=1, location="Room 4"), make_invite(method="CANCEL", sequence=2)]
    ):
        status, _ = radicale.request(
            "PUT",
            "/careloop/team/checkin-42.ics",
            build_invite(invite),
            **{"Content-Type": "text/calendar; charset=utf-8"},
        )
        assert status == (201 if n == 0 else 204), n


def test_radicale_refuses_a_broken_calendar(radicale):
    broken = build_invite(make_invite(uid="broken")).replace(
        b"DTSTART;TZID=Europe/Berlin:2025", b"DTSTART;TZID=Europe/Berlin:XX25"
    )
    status, _ = radicale.request(
        "PUT", "/careloop/team/broken.ics", broken, **{"Content-Type": "text/calendar"}
    )
    assert status == 400


@pytest.mark.parametrize(("window_start", "found"), [("20250602T143000Z", True), ("20250602T163000Z", False)])
def test_radicale_reads_the_time_in_the_right_zone(radicale, window_start, found):
    # 15:00 UTC = 17:00 Berlin. A server that read TZID wrongly (as UTC) would put it at 17:00Z.
    invite = make_invite(uid="tz-check@careloop")
    status, _ = radicale.request(
        "PUT", "/careloop/team/tz-check.ics", build_invite(invite), **{"Content-Type": "text/calendar"}
    )
    assert status in (201, 204)
    start = datetime.strptime(window_start, "%Y%m%dT%H%M%SZ")
    end = (start + timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    query = f"""<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><D:getetag/></D:prop>
  <C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">
    <C:time-range start="{window_start}" end="{end}"/>
  </C:comp-filter></C:comp-filter></C:filter>
</C:calendar-query>""".encode()
    status, body = radicale.request(
        "REPORT", "/careloop/team/", query, **{"Content-Type": "application/xml", "Depth": "1"}
    )
    assert status == 207
    assert (b"tz-check.ics" in body) is found


# --- file outbox --------------------------------------------------------------------------


def test_outbox_sms_appends_a_line_and_echoes(tmp_path, capsys):
    outbox = FileOutbox("sms", tmp_path)
    message = make_message("sms", to="+15551234567", to_name="Sam", text="Note added.\nOpen careloop.")
    assert outbox.lookup(message) is None

    receipt = outbox.send(message)
    outbox.send(replace(message, delivery_id="dlv-8"))

    lines = (tmp_path / "sms.log").read_text().splitlines()
    assert len(lines) == 2
    stamp, ref, to, body = lines[0].split("\t")
    assert datetime.fromisoformat(stamp).tzinfo is not None
    assert (ref, to, body) == ("dlv-7.1", "+15551234567", "Note added.\\nOpen careloop.")
    assert receipt.provider_id == "outbox:sms.log" and receipt.status == "sent"
    echoed = capsys.readouterr().out.splitlines()
    assert echoed[0] == "[sms] to Sam (+15551234567): Note added. Open careloop."
    assert outbox.lookup(message) == receipt
    assert outbox.lookup(replace(message, delivery_id="dlv-70")) is None


def test_outbox_email_writes_the_same_email_smtp_would_send(tmp_path, capsys, smtp, mailer):
    outbox = FileOutbox("email", tmp_path, echo=False, mail_from=MAIL_FROM)
    message = make_message()
    assert outbox.lookup(message) is None

    receipt = outbox.send(message)
    mailer.send(message)

    path = tmp_path / "email" / "dlv-7.1.eml"
    assert receipt.provider_id == "outbox:email/dlv-7.1.eml"
    written = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    sent = smtp.messages[0]
    for header in ("From", "To", "Subject", "Message-ID"):
        assert written[header] == sent[header], header
    assert written.get_body(("html",)).get_content() == sent.get_body(("html",)).get_content()
    assert capsys.readouterr().out == ""
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["dlv-7.1.eml"]  # no temp files left
    assert outbox.lookup(replace(message, attempt=2)) == receipt


def test_outbox_calendar_writes_eml_and_ics(tmp_path, capsys):
    outbox = FileOutbox("calendar", tmp_path, mail_from=MAIL_FROM)
    message = make_message("calendar", invite=make_invite(sequence=3))

    receipt = outbox.send(message)

    eml = tmp_path / "email" / "dlv-7.1.eml"
    ics = tmp_path / "calendar" / "checkin-42@careloop.3.ics"
    assert receipt.provider_id == "outbox:email/dlv-7.1.eml"
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert calendar_part(msg).get_payload(decode=True) == ics.read_bytes()
    cal, event = parse_ics(ics.read_bytes())
    assert cal["METHOD"] == "REQUEST" and event["SEQUENCE"] == 3
    out = capsys.readouterr().out
    assert out.startswith("[calendar] REQUEST #3 to Dr. Zoë Ruiz <zoe@example.net>: Weekly check-in")


def test_outbox_ids_cannot_escape_the_directory(tmp_path):
    outbox = FileOutbox("email", tmp_path / "out", echo=False)
    outbox.send(make_message(delivery_id="../../etc/passwd"))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.eml")] == [
        "out/email/_.._etc_passwd.1.eml"
    ]
