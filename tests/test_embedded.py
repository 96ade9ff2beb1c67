"""The embedded default (no REDIS_URL): the in-process queue, the file outbox, and `careloop demo`.

Everything here runs without Redis, Twilio or an SMTP server, and must not open a socket.
"""

from __future__ import annotations

import email
import email.policy
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import icalendar
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from careloop.db import session_scope
from careloop.models import Delivery, Event, OutboxEntry, utcnow
from tests.conftest import checkin_data, close_app, drain, wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_network(monkeypatch):
    """Fail (and record) any socket connect made from Python code in this process.

    psycopg connects through libpq, outside Python's socket module, so PostgreSQL is unaffected.
    """
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test forbids network access (to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def _outbox_path(provider_id: str, outbox: Path) -> Path:
    """The file a delivery's provider id names: a path in the outbox folder (never the server's)."""
    assert provider_id.startswith("outbox:"), provider_id
    relative = Path(provider_id[len("outbox:") :])
    assert not relative.is_absolute() and ".." not in relative.parts, provider_id
    return outbox / relative


def _parse_eml(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def _calendar_part(msg) -> bytes:
    parts = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.walk()]
    return parts[0].get_payload(decode=True)


def _deliveries(url, event_id) -> list[Delivery]:
    with session_scope(url) as session:
        return list(session.scalars(select(Delivery).where(Delivery.event_id == event_id)).all())


# --- The full loop, on SQLite and on PostgreSQL --------------------------------------------------


def test_embedded_full_loop_writes_sms_email_and_invites_to_the_outbox(app, api, team, settings, no_network):
    nb, m = team
    outbox = settings.outbox_dir
    # medication.changed → the other parent (SMS + email), neurology (email; SMS skipped: no phone)
    med = api.event(
        nb["id"],
        "medication.changed",
        {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg"},
        author_member_id=m["mom"]["id"],
    )
    # urgent swallowing concern → the whole team but the author
    concern = api.event(
        nb["id"],
        "concern.raised",
        {"summary": "Choking on thin liquids", "severity": "urgent", "area": "swallowing"},
        author_member_id=m["mom"]["id"],
    )
    attendees = [m["mom"]["id"], m["dad"]["id"], m["slp"]["id"]]
    checkin = api.event(nb["id"], "checkin.scheduled", checkin_data(attendees, checkin_id="iep-7"))
    drain(app)

    # -- deliveries as the API shows them
    med_rows = api.get(f"/v1/events/{med['id']}")["deliveries"]
    assert sorted((d["member_id"], d["channel"], d["status"]) for d in med_rows) == sorted(
        [
            (m["dad"]["id"], "sms", "sent"),
            (m["dad"]["id"], "email", "sent"),
            (m["neuro"]["id"], "email", "sent"),
            (m["neuro"]["id"], "sms", "skipped"),
        ]
    )
    skipped = next(d for d in med_rows if d["status"] == "skipped")
    assert skipped["error"] and "phone" in skipped["error"] and skipped["provider_id"] is None

    concern_rows = api.get(f"/v1/events/{concern['id']}")["deliveries"]
    told = {d["member_id"] for d in concern_rows}
    assert told == {m[k]["id"] for k in ("dad", "neuro", "pt", "slp", "school")}
    checkin_rows = api.get(f"/v1/events/{checkin['id']}")["deliveries"]
    assert sorted((d["member_id"], d["channel"]) for d in checkin_rows) == sorted(
        (member_id, "calendar") for member_id in attendees
    )

    all_rows = med_rows + concern_rows + checkin_rows
    for d in all_rows:
        assert d["status"] in ("sent", "skipped"), d
        if d["status"] == "sent":
            assert d["provider_id"].startswith("outbox:"), d
            assert d["attempts"] == 1 and d["error"] is None, d
    members_by_id = {mem["id"]: mem for mem in m.values()}

    # -- SMS: one sms.log line per sent text, keyed by delivery.attempt, no medical details
    sms_lines = (outbox / "sms.log").read_text(encoding="utf-8").splitlines()
    sms_sent = [d for d in all_rows if d["channel"] == "sms" and d["status"] == "sent"]
    assert len(sms_lines) == len(sms_sent) == 3  # dad twice, PT once
    by_ref = {line.split("\t")[1]: line.split("\t") for line in sms_lines}
    for d in sms_sent:
        assert _outbox_path(d["provider_id"], outbox) == outbox / "sms.log"
        _stamp, _ref, to, body = by_ref[f"{d['id']}.1"]
        assert to == members_by_id[d["member_id"]]["phone"]
        assert "Maya" in body and "levetiracetam" not in body and "250 mg" not in body
        assert "Choking" not in body

    # -- email: a parseable .eml per delivery, addressed to the member, with a stable Message-ID
    emails = [d for d in all_rows if d["channel"] == "email" and d["status"] == "sent"]
    assert len(emails) == 2 + 5
    for d in emails:
        path = _outbox_path(d["provider_id"], outbox)
        assert path.parent == outbox / "email" and path.name == f"{d['id']}.1.eml"
        msg = _parse_eml(path)
        assert msg["To"].addresses[0].addr_spec == members_by_id[d["member_id"]]["email"]
        assert msg["Message-ID"] == f"<{d['id']}.1@careloop.test>"
        assert msg["From"].addresses[0].addr_spec == "careloop@careloop.test"
        assert msg["Subject"] and "Maya" in msg["Subject"]
        assert msg.get_body(("plain",)) is not None
    subjects = {_parse_eml(_outbox_path(d["provider_id"], outbox))["Subject"] for d in emails}
    assert any("medication" in s.lower() for s in subjects) and any("URGENT" in s for s in subjects)

    # -- calendar: iMIP email per attendee, and the .ics beside it, parseable by icalendar
    uids = set()
    for d in checkin_rows:
        msg = _parse_eml(_outbox_path(d["provider_id"], outbox))
        assert msg["To"].addresses[0].addr_spec == members_by_id[d["member_id"]]["email"]
        assert msg["Message-ID"] == f"<{d['id']}.1@careloop.test>"
        cal = icalendar.Calendar.from_ical(_calendar_part(msg))
        assert str(cal["METHOD"]) == "REQUEST"
        (vevent,) = cal.walk("VEVENT")
        uids.add(str(vevent["UID"]))
        assert int(vevent["SEQUENCE"]) == 0
        assert str(vevent["SUMMARY"]) == "IEP meeting"
        attendee_addrs = sorted(str(a).lower().removeprefix("mailto:") for a in vevent["ATTENDEE"])
        assert attendee_addrs == sorted(members_by_id[i]["email"] for i in attendees)
    assert len(uids) == 1
    (uid,) = uids
    ics_files = sorted((outbox / "calendar").glob("*.ics"))
    assert len(ics_files) == 1 and ics_files[0].name.endswith(".0.ics")
    ics = icalendar.Calendar.from_ical(ics_files[0].read_bytes())
    assert str(ics["METHOD"]) == "REQUEST"
    (vevent,) = ics.walk("VEVENT")
    assert str(vevent["UID"]) == uid and int(vevent["SEQUENCE"]) == 0

    # -- an update raises SEQUENCE under the same UID; a cancel says METHOD:CANCEL
    api.event(
        nb["id"], "checkin.updated", checkin_data(attendees, checkin_id="iep-7", title="IEP meeting (moved)")
    )
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "iep-7"})
    drain(app)
    seen = {}
    for path in (outbox / "calendar").glob("*.ics"):
        cal = icalendar.Calendar.from_ical(path.read_bytes())
        (ev,) = cal.walk("VEVENT")
        assert str(ev["UID"]) == uid
        seen[int(ev["SEQUENCE"])] = str(cal["METHOD"])
    assert seen == {0: "REQUEST", 1: "REQUEST", 2: "CANCEL"}

    assert no_network == [], f"embedded mode tried to reach the network: {no_network}"


def test_embedded_mode_runs_on_the_in_process_queue_without_redis(app, settings):
    runtime = app.extensions["careloop"].runtime
    assert settings.redis_url is None
    assert runtime.dispatcher.mode == "inprocess"
    assert {k: type(v).__name__ for k, v in runtime.channels.items()} == {
        "sms": "FileOutbox",
        "email": "FileOutbox",
        "calendar": "FileOutbox",
    }
    health = app.test_client().get("/healthz").get_json()
    assert health["status"] == "ok", health


# --- Nothing accepted is lost across a restart ---------------------------------------------------


class _QueueDown:
    """A dispatcher whose queue is unreachable: intake must still accept and keep the promise."""

    mode = "inprocess"

    def route(self, event_ids):
        raise ConnectionError("queue down")

    def deliver(self, delivery_ids, delay=None):
        raise ConnectionError("queue down")

    def ping(self):
        return False

    def close(self):
        pass


def _post_accepted_events(api, nb, m, count):
    return [
        api.event(
            nb["id"],
            "medication.changed",
            {"medication": f"med-{i}", "change": "started"},
            author_member_id=m["mom"]["id"],
        )["id"]
        for i in range(count)
    ]


def _restart(settings, old_app):
    """The process restarted: the old app's queue is gone (stopped), a new app starts."""
    from careloop.service import create_app

    close_app(old_app)
    app = create_app({"TESTING": True}, settings=settings)
    return app, app.extensions["careloop"].runtime


def _pending_outbox(url) -> int:
    with session_scope(url) as session:
        return session.scalar(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.done_at.is_(None))
        )


def _assert_routed_once(url, event_ids, m):
    with session_scope(url) as session:
        rows = session.scalars(select(Delivery)).all()
        unrouted = session.scalars(select(Event.id).where(Event.routed_at.is_(None))).all()
    assert unrouted == []
    assert sorted({d.event_id for d in rows}) == sorted(event_ids)
    for event_id in event_ids:
        mine = sorted((d.member_id, d.channel, d.status) for d in rows if d.event_id == event_id)
        assert mine == sorted(
            [
                (m["dad"]["id"], "email", "sent"),
                (m["dad"]["id"], "sms", "sent"),
                (m["neuro"]["id"], "email", "sent"),
                (m["neuro"]["id"], "sms", "skipped"),
            ]
        )


def test_events_accepted_while_the_queue_was_unreachable_are_routed_after_a_restart(
    app, api, team, settings, db_url
):
    from careloop.workers.relay import relay_once

    nb, m = team
    runtime = app.extensions["careloop"].runtime
    runtime.__dict__["dispatcher"] = _QueueDown()  # cached_property: replace the built one
    ids = _post_accepted_events(api, nb, m, 3)
    assert _pending_outbox(db_url) == 3

    app2, runtime2 = _restart(settings, app)
    assert relay_once(runtime2)["events"] == 3
    drain(app2)
    _assert_routed_once(db_url, ids, m)
    assert _pending_outbox(db_url) == 0
    assert len((settings.outbox_dir / "sms.log").read_text().splitlines()) == 3
    # a second sweep finds nothing to do and sends nothing again
    assert relay_once(runtime2) == {"events": 0, "deliveries": 0, "stale": 0}
    drain(app2)
    assert len((settings.outbox_dir / "sms.log").read_text().splitlines()) == 3


def test_events_in_a_stopped_in_process_queue_are_routed_after_a_restart(app, api, team, settings, db_url):
    """The process died with jobs in its in-memory queue: the outbox still has them."""
    from careloop.workers.relay import relay_once

    nb, m = team
    app.extensions["careloop"].runtime.dispatcher.stop()
    ids = _post_accepted_events(api, nb, m, 2)
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
    assert _pending_outbox(db_url) == 2

    app2, runtime2 = _restart(settings, app)
    # the restarted process sees them as handed over moments ago; once the claim timeout has
    # passed (simulated by ageing the records) the relay hands them over again
    with session_scope(db_url) as session:
        session.execute(
            update(OutboxEntry).values(dispatched_at=utcnow() - timedelta(seconds=settings.claim_timeout + 1))
        )
    assert relay_once(runtime2)["events"] == 2
    drain(app2)
    _assert_routed_once(db_url, ids, m)
    assert _pending_outbox(db_url) == 0


def test_a_delivery_left_queued_by_a_dead_process_is_sent_after_a_restart(app, api, team, settings, db_url):
    """Routed, deliveries recorded, then the process died before sending them."""
    from careloop.workers.relay import relay_once

    nb, m = team
    runtime = app.extensions["careloop"].runtime
    # route for real, but let delivery jobs go nowhere
    runtime.dispatcher.deliver = lambda ids, delay=None: None
    (event_id,) = _post_accepted_events(api, nb, m, 1)
    drain(app)
    rows = _deliveries(db_url, event_id)
    assert sorted(d.status for d in rows) == ["queued", "queued", "queued", "skipped"]

    app2, runtime2 = _restart(settings, app)
    with session_scope(db_url) as session:  # the enqueue happened long enough ago
        session.execute(
            update(Delivery)
            .where(Delivery.status == "queued")
            .values(enqueued_at=utcnow() - timedelta(seconds=settings.claim_timeout + 1))
        )
    assert relay_once(runtime2)["deliveries"] == 3
    drain(app2)
    _assert_routed_once(db_url, [event_id], m)


# --- careloop demo -------------------------------------------------------------------------------

DEMO_EVENT_TYPES = ("medication.changed", "concern.raised", "checkin.scheduled")


def demo_links(output: str) -> dict[str, dict[str, str]]:
    """The demo's "Member links" section: event type → "Name (role)" → URL."""
    section = output.split("Member links:", 1)[1].split("Serving the demo's app", 1)[0]
    links: dict[str, dict[str, str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("● "):
            current = links.setdefault(line[2:].strip(), {})
        elif line.strip():
            who, url = line.strip().rsplit(": ", 1)
            current[who] = url
    return links


def _check_demo_output(output: str, outbox: Path) -> None:
    assert "careloop demo — notebook nb_" in output
    assert "for Maya Rivera, 6 team members" in output
    for event_type in DEMO_EVENT_TYPES:
        assert f"● {event_type}" in output, output
    lines = [line.strip() for line in output.splitlines() if "→" in line and not line.startswith("[")]
    deliveries = [line for line in lines if line.split()[0] in ("sent", "skipped", "failed", "queued")]
    # med (4), urgent concern (10), invites to the 4 attendees (Dana, the author, included)
    assert len(deliveries) == 4 + 10 + 4, output
    assert not [line for line in deliveries if not line.startswith(("sent", "skipped"))], output
    # the people, named with their role
    assert "sent     email    → Dr. Priya Shah (neurology): outbox:" in output
    assert "sent     calendar → Jordan Lee (speech therapy): outbox:" in output
    assert "sent     sms      → Sam Rivera (parent): outbox:" in output
    # members without a phone get a skipped SMS, with the reason
    for who in ("Dr. Priya Shah (neurology)", "Jordan Lee (speech therapy)", "Ms. Ortiz (school)"):
        assert f"skipped  sms      → {who}: member has no phone number" in output, who
    # preferences and timing: a deferred alert, a digest of three, a channel turned off
    timing = output.split("Preferences and timing", 1)[1].split("Member links:", 1)[0]
    assert "deferred: Alex Kim (physical therapy), email: waits until quiet hours end" in timing
    assert timing.count("digest:   Dana Rivera (parent), email: waits for the daily digest") == 3
    assert timing.count("skipped:  Sam Rivera (parent), email: preference_off") == 3
    assert "her digest sent, one email for 3 therapy logs: outbox:email/dig_" in timing
    (digest,) = (outbox / "email").glob("dig_*.eml")
    assert "Subject: Daily digest for Maya" in digest.read_text(encoding="utf-8")
    # each person's own link to each event, pointing at the demo's app (what --serve serves)
    links = demo_links(output)
    assert [len(people) for people in links.values()] == [2, 5, 4], output
    assert "Ms. Ortiz (school)" in links["concern.raised"]
    assert "Dana Rivera (parent)" in links["checkin.scheduled"]
    urls = [url for people in links.values() for url in people.values()]
    assert len(set(urls)) == len(urls) and all(u.startswith("http://127.0.0.1:8000/m/") for u in urls)
    # the outbox holds what was sent
    sms = (outbox / "sms.log").read_text(encoding="utf-8").splitlines()
    # Sam for the medication; Sam and Alex for the concern; Dana's check-in reminder (reminders)
    assert len(sms) == 1 + 2 + 1
    # invites are .eml too; and Dana's daily digest (preferences and timing, below); the reminders'
    # check-in: two invites and Jordan's reminder email
    assert len(list((outbox / "email").glob("*.eml"))) == 2 + 5 + 4 + 1 + 2 + 1
    # --- reminders (issue 12): a check-in tomorrow, its 24 h reminders sent by each one's channel ---
    reminders = output.split("Reminders (24 h, 1 h before each check-in", 1)[1].split("Member links:", 1)[0]
    assert reminders.count("pending: ") == 4, reminders
    assert "sent:    Dana Rivera (parent), sms: outbox:sms.log" in reminders
    assert "sent:    Jordan Lee (speech therapy), email: outbox:email/rem_" in reminders
    assert "careloop reminder: Maya's check-in tomorrow" in sms[-1]
    (reminder,) = (outbox / "email").glob("rem_*.eml")
    assert "Subject: Reminder: PT planning call tomorrow" in reminder.read_text(encoding="utf-8")
    ics = next(p for p in (outbox / "calendar").glob("*.ics") if b"IEP team meeting" in p.read_bytes())
    cal = icalendar.Calendar.from_ical(ics.read_bytes())
    assert str(cal["METHOD"]) == "REQUEST"
    assert str(cal.walk("VEVENT")[0]["SUMMARY"]) == "IEP team meeting"


def test_demo_command_runs_the_whole_loop_in_process(tmp_path, no_network, monkeypatch):
    from careloop.cli import main
    monkeypatch.chdir(tmp_path)
    outbox = tmp_path / "outbox"
    database = f"sqlite:///{tmp_path / 'demo.db'}"
    result = CliRunner().invoke(main, ["demo", "--outbox", str(outbox), "--database", database])
    assert result.exit_code == 0, (result.output, result.exception)
    _check_demo_output(result.output, outbox)
    assert f"outbox: {outbox.resolve()}" in result.output
    assert (tmp_path / "demo.db").exists()
    assert no_network == []


def test_demo_command_twice_starts_afresh(tmp_path, monkeypatch):
    from careloop.cli import main
    monkeypatch.chdir(tmp_path)
    database = f"sqlite:///{tmp_path / 'demo.db'}"
    for _ in range(2):
        result = CliRunner().invoke(main, ["demo", "--outbox", "ob", "--database", database])
        assert result.exit_code == 0, (result.output, result.exception)
    # the database is rebuilt: one notebook, not two
    from careloop.models import Notebook

    with session_scope(database) as session:
        assert session.scalar(select(func.count()).select_from(Notebook)) == 1


def _demo_process(cwd, *args: str) -> subprocess.CompletedProcess:
    """`careloop demo` as a real process in ``cwd``, with no careloop settings in its environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CARELOOP_", "TWILIO_", "SMTP_", "REDIS_", "DATABASE_", "MAIL_"))
    }
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "careloop.cli", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_as_a_real_process_from_a_fresh_directory(tmp_path):
    proc = _demo_process(tmp_path, "--outbox", "out", "--database", "sqlite:///demo.db")
    assert proc.returncode == 0, proc.stderr
    _check_demo_output(proc.stdout, tmp_path / "out")
    assert (tmp_path / "demo.db").exists()
    assert "Traceback" not in proc.stderr


def test_demo_with_the_default_options_writes_into_the_working_directory(tmp_path):
    proc = _demo_process(tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_demo_output(proc.stdout, tmp_path / "careloop-outbox")
    assert (tmp_path / "careloop-demo.db").exists()


def test_demo_against_a_fresh_postgresql_database_applies_the_migrations(tmp_path, monkeypatch):
    from careloop.cli import main
    from tests.test_migrations import fresh_pg_database

    monkeypatch.chdir(tmp_path)
    with fresh_pg_database("demo") as url:
        result = CliRunner().invoke(main, ["demo", "--outbox", str(tmp_path / "ob"), "--database", url])
        assert result.exit_code == 0, (result.output, result.exception)
        _check_demo_output(result.output, tmp_path / "ob")


def test_the_demos_member_links_open_while_it_serves_its_app(tmp_path):
    """`careloop demo --serve`: the links it prints open, with no key, in what it serves."""
    import http.client
    import re
    import signal

    from tests.peers.twilio_peer import free_port

    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CARELOOP_", "TWILIO_", "SMTP_", "REDIS_", "DATABASE_", "MAIL_"))
    }
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "careloop.cli", "demo", "--serve", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "Serving the demo's app" in log.read_text() or proc.poll() is not None, timeout=60)
        output = log.read_text()
        assert proc.poll() is None, output
        assert f"Serving the demo's app at http://127.0.0.1:{port}" in output
        links = demo_links(output)
        assert sum(len(people) for people in links.values()) == 11

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

        for event_type, people in links.items():
            for who, url in people.items():
                assert url.startswith(f"http://127.0.0.1:{port}/m/"), url
                status, html = get(url.removeprefix(f"http://127.0.0.1:{port}"))
                assert status == 200, (event_type, who, html[:300])
                assert f"For {who}" in html.replace("&#39;", "'")
        school = links["concern.raised"]["Ms. Ortiz (school)"].removeprefix(f"http://127.0.0.1:{port}")
        status, html = get(school)
        assert "Coughing" not in html and "shared only with the members" in html
        status, html = get(school[:-3] + "abc")
        assert status == 404 and "This link no longer works" in html
        # nothing the server logged holds a token
        tokens = [url.rsplit("/", 1)[1] for people in links.values() for url in people.values()]
        served_log = log.read_text().split("Serving the demo's app", 1)[1]
        assert "GET /m/[token] HTTP/1.1" in served_log  # request lines are logged, redacted
        assert not [t for t in tokens if t in served_log]
        assert not re.search(r"/m/[A-Za-z0-9_-]{20,}\.", served_log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()[-2000:]
