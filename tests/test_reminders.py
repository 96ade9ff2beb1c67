"""Check-in reminders: the pure planning and text, then the whole loop on real Redis and RQ's
scheduler with a controllable clock (time-machine) — sent 24 h and 1 h before, moved with the
check-in or with one occurrence of a series, dropped when cancelled, an attendee is removed or
the time has passed, surviving Redis losing its data — and exactly once with two `careloop
worker` processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from pydantic import ValidationError
from sqlalchemy import select, update

from careloop import preferences as prefs
from careloop import reminders as rm
from careloop.config.settings import Settings
from careloop.db import session_scope
from careloop.models import Reminder, utcnow
from tests.conftest import build_app, close_app, peer_settings, run_worker_once, wait_until
from tests.test_faults import start_worker, stop_worker, worker_env


def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Tue 12 Jan 2027, 5:00–5:45 pm CST in Chicago
START, END = _utc(2027, 1, 12, 23, 0), _utc(2027, 1, 12, 23, 45)
DUE_24H, DUE_1H = START - timedelta(hours=24), START - timedelta(hours=1)
T0 = _utc(2027, 1, 10, 12, 0)


# --- pure ---------------------------------------------------------------------------------------


def test_times_read_as_people_say_them_in_the_recipients_zone():
    chicago = "America/Chicago"
    assert rm.when_text(START, END, chicago, DUE_24H) == "tomorrow, Tue 12 Jan, 5:00–5:45 pm CST"
    assert rm.when_text(START, END, chicago, DUE_1H) == "today, Tue 12 Jan, 5:00–5:45 pm CST"
    assert rm.when_text(START, END, chicago, T0) == "on Tue 12 Jan, 5:00–5:45 pm CST"
    noon = _utc(2027, 1, 12, 17, 30)  # 11:30 am CST
    assert rm.when_text(noon, noon + timedelta(minutes=45), chicago, noon) == (
        "today, Tue 12 Jan, 11:30 am–12:15 pm CST"
    )
    # the recipient's own zone: London reads the same check-in as 11:00–11:45 pm GMT
    assert (
        rm.when_text(START, END, "Europe/London", DUE_1H, dash="-") == "today, Tue 12 Jan, 11:00-11:45 pm GMT"
    )


def _attendee(member_id="mem_a", email="a@example.org", phone=None, **preferences):
    return rm.Attendee(
        member_id, email, phone, False, "America/Chicago", prefs.Preferences.model_validate(preferences)
    )


def _single(start=START, end=END):
    return rm.occurrences(
        {"title": "IEP meeting", "start": start.isoformat(), "end": end.isoformat()}, "America/Chicago"
    )


def test_planning_24h_and_1h_by_the_preferred_channel_quiet_hours_only_for_the_24h_one():
    texts = _attendee("mem_t", phone="+15555550101")  # sms is first in the default order
    mails = _attendee("mem_m", channels={"checkin": ["email", "sms"]}, phone="+15555550102")
    none = _attendee("mem_n", email=None)  # no phone, no email: no reminder
    wanted = rm.plan(_single(), [texts, mails, none], (1440, 60), T0)
    assert sorted((w.member_id, w.channel, w.offset_minutes, w.due_at) for w in wanted) == [
        ("mem_m", "email", 60, DUE_1H),
        ("mem_m", "email", 1440, DUE_24H),
        ("mem_t", "sms", 60, DUE_1H),
        ("mem_t", "sms", 1440, DUE_24H),
    ]
    # quiet hours 15:00–18:00 local: the 24 h reminder (5 pm) waits until 6 pm; the 1 h one does not
    quiet = _attendee(quiet_hours={"start": "15:00", "end": "18:00"})
    wanted = {w.offset_minutes: w for w in rm.plan(_single(), [quiet], (1440, 60), T0)}
    assert (wanted[1440].due_at, wanted[1440].hold) == (DUE_24H + timedelta(hours=1), "quiet_hours")
    assert (wanted[60].due_at, wanted[60].hold) == (DUE_1H, None)
    # a check-in that has begun, or offsets turned off, want none
    assert rm.plan(_single(), [texts], (1440, 60), START) == []
    assert rm.plan(_single(), [texts], (), T0) == []


def test_a_series_is_materialized_within_the_horizon_and_a_moved_occurrence_at_its_new_time():
    details = {
        "title": "Team check-in",
        "start": START.isoformat(),
        "end": END.isoformat(),
        "recurrence": "FREQ=WEEKLY;COUNT=4",
        "occurrences": {
            rm.occurrence_key(START + timedelta(days=7)): {
                "start": (START + timedelta(days=8)).isoformat(),
                "end": (END + timedelta(days=8)).isoformat(),
            },
            rm.occurrence_key(START + timedelta(days=14)): {"cancelled": True},
        },
    }
    found = rm.occurrences(details, "America/Chicago")
    assert [o.start for o in found] == [START + timedelta(days=d) for d in (0, 8, 14, 21)]
    assert [o.cancelled for o in found] == [False, False, True, False]
    # expanded only up to a time (the sweep's horizon), with every occurrence changed on its own
    limited = rm.occurrences(details, "America/Chicago", until=START + timedelta(days=1))
    assert [o.start for o in limited] == [START + timedelta(days=d) for d in (0, 8, 14)]
    starts = lambda now: sorted({w.starts_at for w in rm.plan(found, [_attendee()], (1440, 60), now)})  # noqa: E731
    assert starts(T0) == [START]  # the next week's is beyond the horizon yet
    assert starts(START + timedelta(days=5)) == [START + timedelta(days=8)]  # moved, at its new time
    assert starts(START + timedelta(days=13)) == []  # the cancelled one
    assert starts(START + timedelta(days=20)) == [START + timedelta(days=21)]


def test_reminder_offsets_setting():
    assert Settings.from_values(reminder_offsets="24h,1h").reminder_offsets == (1440, 60)
    assert Settings.from_values(reminder_offsets="30m, 2d").reminder_offsets == (2880, 30)
    assert Settings.from_values(reminder_offsets="").reminder_offsets == ()
    for bad in ("8d", "0m", "soon", "1h,2h,3h,4h,5h,6h"):
        with pytest.raises(ValidationError, match="CARELOOP_REMINDER_OFFSETS"):
            Settings.from_values(reminder_offsets=bad)


# --- the whole loop -----------------------------------------------------------------------------


@pytest.fixture
def loop(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    yield app.extensions["careloop"].runtime, api
    close_app(app)


_run_worker = run_worker_once


def _reminders(url, **where) -> list[Reminder]:
    with session_scope(url) as session:
        query = select(Reminder).order_by(Reminder.due_at, Reminder.member_id)
        for name, value in where.items():
            query = query.where(getattr(Reminder, name) == value)
        return list(session.scalars(query).all())


def _mails(smtp):
    return [m for m in smtp.messages if str(m["Message-ID"]).startswith("<rem_")]


def _family(api):
    nb = api.notebook(timezone="America/Chicago")
    mom = api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org")  # email only
    dad = api.member(nb["id"], "Sam Rivera", "parent", email="sam@example.org", phone="+15555550102")
    teacher = api.member(nb["id"], "Ms. Ortiz", "school", email="ortiz@example.org")
    return nb, mom, dad, teacher


def _checkin(nb, attendees, start=START, end=END, **extra):
    return {
        "checkin_id": "iep-1",
        "title": "IEP meeting",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "attendees": [a["id"] for a in attendees],
        **extra,
    }


def test_reminders_go_24h_and_1h_before_by_each_attendees_channel_even_after_redis_lost_its_data(
    loop, pg_only_url, smtp, twilio_proxy, redis_conn
):
    runtime, api = loop
    with time_machine.travel(T0, tick=True):
        nb, mom, dad, _ = _family(api)
        event = api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom, dad]))
        _run_worker(runtime)
        planned = _reminders(pg_only_url)
        assert sorted(
            (r.member_id, r.channel, r.offset_minutes, r.due_at, r.status) for r in planned
        ) == sorted(
            [
                (mom["id"], "email", 1440, DUE_24H, "pending"),
                (mom["id"], "email", 60, DUE_1H, "pending"),
                (dad["id"], "sms", 1440, DUE_24H, "pending"),
                (dad["id"], "sms", 60, DUE_1H, "pending"),
            ]
        )
        # RQ's scheduler holds a job for each, at its time
        scheduled = runtime.dispatcher.queue("email").scheduled_job_registry.get_job_ids()
        assert len(scheduled) == 2
        redis_conn.flushdb()  # Redis restarts empty: the rows are the promise
    with time_machine.travel(DUE_24H - timedelta(minutes=1), tick=True):
        _run_worker(runtime)
        assert _mails(smtp) == [] and twilio_proxy.sent == []
    with time_machine.travel(DUE_24H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        _run_worker(runtime)
        (mail,) = _mails(smtp)
        assert str(mail["To"].addresses[0].addr_spec) == "dana@example.org"
        assert mail["Subject"] == "Reminder: IEP meeting tomorrow, Tue 12 Jan, 5:00–5:45 pm CST"
        (text,) = twilio_proxy.sent
        assert text["To"] == "+15555550102"
        assert text["Body"].startswith(
            "careloop reminder: Maya's check-in tomorrow, Tue 12 Jan, 5:00-5:45 pm CST."
        )
        assert "IEP" not in text["Body"]  # a text never says what a check-in is about
        assert "https://careloop.test/m/" in text["Body"]  # his own link to the check-in
    with time_machine.travel(DUE_1H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        _run_worker(runtime)
        assert [m["Subject"] for m in _mails(smtp)][
            1
        ] == "Reminder: IEP meeting today, Tue 12 Jan, 5:00–5:45 pm CST"
        assert len(twilio_proxy.sent) == 2
        shown = api.get(f"/v1/events/{event['id']}")
    assert len(_mails(smtp)) == 2
    assert [(r["status"], r["attempts"]) for r in shown["reminders"]] == [("sent", 1)] * 4
    assert {r["offset_minutes"] for r in shown["reminders"]} == {1440, 60}


def test_a_moved_check_in_drops_its_reminders_and_gets_new_ones_at_the_new_time(
    loop, pg_only_url, smtp, twilio_proxy
):
    runtime, api = loop
    later = timedelta(hours=2)
    with time_machine.travel(T0, tick=True):
        nb, mom, dad, teacher = _family(api)
        api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom, dad, teacher]))
        _run_worker(runtime)
        assert len(_reminders(pg_only_url, status="pending")) == 6
        # moved two hours later; the teacher is no longer invited
        api.event(nb["id"], "checkin.updated", _checkin(nb, [mom, dad], START + later, END + later))
        _run_worker(runtime)
        dropped = _reminders(pg_only_url, status="cancelled")
        assert len(dropped) == 6
        assert {r.error for r in dropped if r.member_id == teacher["id"]} == {
            "the member is no longer an attendee"
        }
        assert {r.error for r in dropped if r.member_id != teacher["id"]} == {"the check-in moved"}
        pending = _reminders(pg_only_url, status="pending")
        assert sorted({r.due_at for r in pending}) == [DUE_24H + later, DUE_1H + later]
        assert {r.member_id for r in pending} == {mom["id"], dad["id"]}
    with time_machine.travel(DUE_24H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        assert _mails(smtp) == [] and twilio_proxy.sent == []  # the old time: nothing
    with time_machine.travel(DUE_24H + later + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
    (mail,) = _mails(smtp)
    assert mail["Subject"] == "Reminder: IEP meeting tomorrow, Tue 12 Jan, 7:00–7:45 pm CST"
    assert len(twilio_proxy.sent) == 1


def test_one_occurrence_of_a_series_moved_alone(loop, pg_only_url, smtp):
    runtime, api = loop
    second = START + timedelta(days=7)
    moved = second + timedelta(hours=3)
    with time_machine.travel(T0, tick=True):
        nb, mom, _, _ = _family(api)
        api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom], recurrence="FREQ=WEEKLY;COUNT=3"))
        _run_worker(runtime)
        assert {r.starts_at for r in _reminders(pg_only_url)} == {START}  # only the next one, yet
        api.event(
            nb["id"],
            "checkin.updated",
            _checkin(nb, [mom], moved, moved + timedelta(minutes=45), occurrence=second.isoformat()),
        )
        _run_worker(runtime)
        assert {(r.starts_at, r.status) for r in _reminders(pg_only_url)} == {(START, "pending")}
    with time_machine.travel(DUE_1H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)  # the first occurrence's 24 h reminder, late, gives way to its 1 h one
    assert [m["Subject"] for m in _mails(smtp)] == [
        "Reminder: IEP meeting today, Tue 12 Jan, 5:00–5:45 pm CST"
    ]
    assert [(r.offset_minutes, r.status, r.error) for r in _reminders(pg_only_url, starts_at=START)] == [
        (1440, "cancelled", "late: a nearer reminder of the same check-in goes instead"),
        (60, "sent", None),
    ]
    with time_machine.travel(START + timedelta(days=5), tick=True):
        _run_worker(runtime)  # time passes: the second occurrence comes within the horizon
        second_ones = _reminders(pg_only_url, status="pending")
        assert {(r.occurrence, r.starts_at) for r in second_ones} == {(rm.occurrence_key(second), moved)}
        assert {r.due_at for r in second_ones} == {moved - timedelta(hours=24), moved - timedelta(hours=1)}
    with time_machine.travel(moved - timedelta(hours=24) + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
    with time_machine.travel(moved - timedelta(hours=1) + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
    subjects = [m["Subject"] for m in _mails(smtp)]
    assert subjects[1:] == [
        "Reminder: IEP meeting tomorrow, Tue 19 Jan, 8:00–8:45 pm CST",
        "Reminder: IEP meeting today, Tue 19 Jan, 8:00–8:45 pm CST",
    ]


def test_a_cancelled_check_in_or_one_whose_time_has_passed_gets_no_reminder(loop, pg_only_url, smtp):
    runtime, api = loop
    with time_machine.travel(T0, tick=True):
        nb, mom, _, _ = _family(api)
        event = api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom]))
        _run_worker(runtime)
        assert len(_reminders(pg_only_url, status="pending")) == 2
        api.event(nb["id"], "checkin.cancelled", {"checkin_id": "iep-1"})
        _run_worker(runtime)
        assert {(r.status, r.error) for r in _reminders(pg_only_url)} == {
            ("cancelled", "the check-in was cancelled")
        }
        shown = api.get(f"/v1/events/{event['id']}")["reminders"]
        assert [r["status"] for r in shown] == ["cancelled", "cancelled"]
    with time_machine.travel(DUE_1H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        assert _mails(smtp) == []
        # scheduled 30 minutes ahead: both reminder times are past — none; 5 hours ahead: the 1 h one
        soon = utcnow().replace(microsecond=0) + timedelta(minutes=30)
        body = _checkin(nb, [mom], soon, soon + timedelta(minutes=30))
        api.event(nb["id"], "checkin.scheduled", {**body, "checkin_id": "soon"})
        later = soon + timedelta(hours=4, minutes=30)
        api.event(
            nb["id"],
            "checkin.scheduled",
            {
                **body,
                "checkin_id": "later",
                "start": later.isoformat(),
                "end": (later + timedelta(minutes=30)).isoformat(),
            },
        )
        _run_worker(runtime)
        assert [(r.starts_at, r.offset_minutes) for r in _reminders(pg_only_url, status="pending")] == [
            (later, 60)
        ]
    assert _mails(smtp) == []


def test_exactly_once_with_two_workers(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    """Two `careloop worker` processes (each with its relay re-planning every check-in) and the
    reminder's job enqueued three more times: one email."""
    from careloop.workers.reminders import send_reminder

    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy, relay_interval=0.2)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    log = tmp_path / "workers.log"
    workers = []
    try:
        nb, mom, _, _ = _family(api)
        start = utcnow().replace(microsecond=0) + timedelta(hours=1, seconds=8)
        workers = [start_worker(worker_env(settings), log), start_worker(worker_env(settings), log)]
        api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom], start, start + timedelta(minutes=30)))
        (reminder,) = wait_until(lambda: _reminders(pg_only_url), timeout=60, message="the reminder planned")
        assert reminder.offset_minutes == 60  # the 24 h one's time had passed
        for _ in range(3):
            runtime.dispatcher.queue("email").enqueue(send_reminder, reminder.id)
        wait_until(lambda: _reminders(pg_only_url, status="sent"), timeout=60, message="the reminder sent")
        deadline = utcnow() + timedelta(seconds=2)  # a few more relay sweeps on both workers
        wait_until(lambda: utcnow() > deadline, timeout=5)
    finally:
        for proc in workers:
            stop_worker(proc)
        close_app(app)
    assert len(_mails(smtp)) == 1, log.read_text()[-3000:]
    (row,) = _reminders(pg_only_url)
    assert (row.status, row.attempts) == ("sent", 1)


def test_a_reminder_whose_worker_vanished_before_calling_the_provider_is_sent_once(loop, pg_only_url, smtp):
    runtime, api = loop
    with time_machine.travel(T0, tick=True):
        nb, mom, _, _ = _family(api)
        api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom]))
        _run_worker(runtime)
    with time_machine.travel(DUE_24H + timedelta(seconds=2), tick=True):
        (first, _) = _reminders(pg_only_url)
        with session_scope(pg_only_url) as session:  # a worker claims it, then dies
            assert rm.claim(session, first.id, "gone-worker") == 1
            session.execute(
                update(Reminder)
                .where(Reminder.id == first.id)
                .values(claimed_at=utcnow() - timedelta(minutes=5))
            )
        runtime.dispatcher.connection.flushdb()  # and its job with it
        _run_worker(runtime)  # the relay settles the stale claim: never called → sent now
        _run_worker(runtime)
    (mail,) = _mails(smtp)
    (sent,) = _reminders(pg_only_url, id=first.id)
    assert (sent.status, sent.attempts) == ("sent", 1)
    assert mail["Subject"].startswith("Reminder: IEP meeting tomorrow")


def test_quiet_hours_hold_the_24h_reminder_not_the_1h_one_and_a_deactivated_attendee_gets_none(
    loop, pg_only_url
):
    runtime, api = loop
    with time_machine.travel(T0, tick=True):
        nb, mom, dad, _ = _family(api)
        response = api.client.put(
            f"/v1/members/{mom['id']}/preferences",
            json={"quiet_hours": {"start": "15:00", "end": "18:00"}},  # 5 pm CST is inside
            headers=api.headers,
        )
        assert response.status_code == 200
        event = api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom, dad]))
        _run_worker(runtime)
        shown = {
            (r["member_id"], r["offset_minutes"]): r
            for r in api.get(f"/v1/events/{event['id']}")["reminders"]
        }
        assert (shown[mom["id"], 1440]["due_at"], shown[mom["id"], 1440]["held_for"]) == (
            "2027-01-12T00:00:00Z",  # 6 pm CST, when her quiet hours end
            "quiet_hours",
        )
        assert (shown[mom["id"], 60]["due_at"], shown[mom["id"], 60]["held_for"]) == (
            "2027-01-12T22:00:00Z",
            None,
        )
        assert shown[dad["id"], 1440]["due_at"] == "2027-01-11T23:00:00Z"
        response = api.client.patch(f"/v1/members/{dad['id']}", json={"active": False}, headers=api.headers)
        assert response.status_code == 200
    with time_machine.travel(T0 + timedelta(minutes=5), tick=True):
        _run_worker(runtime)  # the relay's sweep re-plans every check-in
        dropped = _reminders(pg_only_url, member_id=dad["id"])
    assert {(r.status, r.error) for r in dropped} == {("cancelled", "the member is no longer active")}
    assert {r.status for r in _reminders(pg_only_url, member_id=mom["id"])} == {"pending"}


def _reply(nb_id: str, checkin_id: str, email: str, partstat: str, stamp: datetime) -> bytes:
    from careloop.checkins import checkin_uid

    return "\r\n".join(
        [
            "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Example//Mail//EN", "METHOD:REPLY", "BEGIN:VEVENT",
            f"UID:{checkin_uid(nb_id, checkin_id)}", "SEQUENCE:0", f"DTSTAMP:{stamp:%Y%m%dT%H%M%SZ}",
            f"ATTENDEE;PARTSTAT={partstat}:mailto:{email}", "END:VEVENT", "END:VCALENDAR", "",
        ]
    ).encode()  # fmt: skip


def test_an_attendee_who_declined_is_not_reminded_until_they_accept_again(loop, pg_only_url, smtp):
    runtime, api = loop
    with time_machine.travel(T0, tick=True):
        nb, mom, dad, _ = _family(api)
        api.event(nb["id"], "checkin.scheduled", _checkin(nb, [mom, dad]))
        _run_worker(runtime)
        assert len(_reminders(pg_only_url, member_id=mom["id"], status="pending")) == 2

        def answer(partstat: str, stamp: datetime) -> None:
            response = api.client.post(
                f"/v1/notebooks/{nb['id']}/checkins/iep-1/replies",
                data=_reply(nb["id"], "iep-1", "dana@example.org", partstat, stamp),
                headers={**api.headers, "Content-Type": "text/calendar"},
            )
            assert response.status_code == 200, response.get_json()

        answer("DECLINED", T0)
    with time_machine.travel(T0 + timedelta(minutes=5), tick=True):
        _run_worker(runtime)  # the relay's sweep re-plans the check-in (once a minute)
        dropped = _reminders(pg_only_url, member_id=mom["id"])
        assert {(r.status, r.error) for r in dropped} == {("cancelled", "the member declined")}
        assert {r.status for r in _reminders(pg_only_url, member_id=dad["id"])} == {"pending"}
    with time_machine.travel(DUE_24H + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        assert _mails(smtp) == []  # Dana declined: no reminder (Sam's goes by text)
    with time_machine.travel(DUE_24H + timedelta(minutes=5), tick=True):
        answer("ACCEPTED", DUE_24H + timedelta(minutes=4))
    with time_machine.travel(DUE_24H + timedelta(minutes=10), tick=True):
        _run_worker(runtime)
        revived = _reminders(pg_only_url, member_id=mom["id"], status="pending")
        assert [r.offset_minutes for r in revived] == [60]  # the 24 h one's time has passed
