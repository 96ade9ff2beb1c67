"""Preferences, quiet hours and digests: the pure timing rules, the API, and the whole loop on
real Redis/RQ (RQ's scheduler) with a controllable clock (time-machine) — quiet hours across a
daylight-saving change in two zones, urgent alerts that do not wait, a channel turned off —
and one digest per member and day with two worker processes and 100 concurrent events."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select, update

from careloop import preferences as prefs
from careloop.db import session_scope
from careloop.models import Delivery, Digest, utcnow
from careloop.routing import EventView, MemberView, plan_deliveries
from careloop.rules import parse_rules
from careloop.vocabulary import SKIP_PREFERENCE_OFF, Hold
from tests.conftest import ADMIN_KEY, build_app, close_app, peer_settings, run_worker_once, wait_until
from tests.test_faults import start_worker, stop_worker, worker_env

CHICAGO, LONDON = ZoneInfo("America/Chicago"), ZoneInfo("Europe/London")
NIGHT = prefs.QuietHours(start="21:00", end="07:00")


def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- The timing rules, pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "now", "expected"),
    [
        # America/Chicago springs forward on 2027-03-14 (02:00 CST → 03:00 CDT): 23:30 CST on the
        # 13th is 05:30Z; the window ends at 07:00 CDT = 12:00Z — 6½ hours later, not 7½.
        (CHICAGO, _utc(2027, 3, 14, 5, 30), _utc(2027, 3, 14, 12, 0)),
        # ...and falls back on 2027-11-07: 23:30 CDT on the 6th (04:30Z) → 07:00 CST = 13:00Z.
        (CHICAGO, _utc(2027, 11, 7, 4, 30), _utc(2027, 11, 7, 13, 0)),
        # Europe/London springs forward on 2027-03-28 (01:00 GMT → 02:00 BST): 22:00 GMT → 07:00 BST = 06:00Z.
        (LONDON, _utc(2027, 3, 27, 22, 0), _utc(2027, 3, 28, 6, 0)),
        # ...and falls back on 2027-10-31: 22:00 BST (21:00Z) → 07:00 GMT = 07:00Z.
        (LONDON, _utc(2027, 10, 30, 21, 0), _utc(2027, 10, 31, 7, 0)),
        # after midnight, inside the window: today's 07:00
        (LONDON, _utc(2027, 6, 1, 3, 0), _utc(2027, 6, 1, 6, 0)),
        # outside the window: no wait; the window's end itself is outside
        (LONDON, _utc(2027, 6, 1, 12, 0), None),
        (LONDON, _utc(2027, 6, 1, 6, 0), None),
        (LONDON, _utc(2027, 6, 1, 19, 59), None),
        (LONDON, _utc(2027, 6, 1, 20, 0), _utc(2027, 6, 2, 6, 0)),
    ],
)
def test_quiet_hours_end_on_the_members_own_clock_across_daylight_saving(zone, now, expected):
    assert prefs.quiet_until(now, zone, NIGHT) == expected


def test_a_daytime_window_and_no_window():
    lunch = prefs.QuietHours(start="12:00", end="13:30")
    assert prefs.quiet_until(_utc(2027, 6, 1, 11, 15), LONDON, lunch) == _utc(2027, 6, 1, 12, 30)
    assert prefs.quiet_until(_utc(2027, 6, 1, 10, 59), LONDON, lunch) is None
    assert prefs.quiet_until(_utc(2027, 6, 1, 23, 0), LONDON, None) is None


def test_a_window_ending_in_the_spring_forward_gap_ends_when_the_clock_passes_it():
    # 02:30 does not exist in Chicago on 2027-03-14: the window ends at 03:00 CDT (08:00Z).
    early = prefs.QuietHours(start="22:00", end="02:30")
    assert prefs.quiet_until(_utc(2027, 3, 14, 5, 0), CHICAGO, early) == _utc(2027, 3, 14, 8, 30)


def test_the_digest_slot_is_today_at_the_local_hour_or_tomorrow_and_respects_quiet_hours():
    p = prefs.Preferences(mode="digest", digest_hour=18)
    # 10:00 CST on 2027-03-13 → that day's 18:00 CST (00:00Z on the 14th)
    slot = prefs.digest_slot(_utc(2027, 3, 13, 16, 0), CHICAGO, p)
    assert slot == prefs.DigestSlot("2027-03-13", _utc(2027, 3, 14, 0, 0))
    # 19:00 CST → the next day's 18:00, which is CDT after the change (23:00Z)
    slot = prefs.digest_slot(_utc(2027, 3, 14, 1, 0), CHICAGO, p)
    assert slot == prefs.DigestSlot("2027-03-14", _utc(2027, 3, 14, 23, 0))
    # a digest hour in quiet hours goes out when they end
    late = prefs.Preferences(mode="digest", digest_hour=22, quiet_hours=NIGHT)
    assert prefs.digest_slot(_utc(2027, 6, 1, 12, 0), LONDON, late) == prefs.DigestSlot(
        "2027-06-01", _utc(2027, 6, 2, 6, 0)
    )


RULES = parse_rules(
    {
        "rules": [
            {
                "name": "meds",
                "when": {"type": "medication.changed"},
                "notify": ["parent"],
                "channels": ["sms", "email"],
            },
            {
                "name": "concerns",
                "when": {"type": "concern.raised"},
                "notify": ["parent"],
                "channels": ["sms", "email"],
            },
            {
                "name": "seizures-now",
                "when": {"type": "concern.raised", "area": "seizure"},
                "notify": ["parent"],
                "channels": ["sms"],
                "bypass_quiet_hours": True,
            },
            {
                "name": "goals",
                "when": {"type": "goal.updated"},
                "notify": ["parent"],
                "channels": ["sms", "email"],
            },
        ]
    }
)


def _parent(**preferences) -> MemberView:
    return MemberView(
        id="mem_p",
        role="parent",
        email="p@example.org",
        phone="+15555550101",
        timezone="Europe/London",
        preferences=prefs.Preferences(**preferences),
    )


LATE = _utc(2027, 6, 1, 22, 0)  # 23:00 BST: quiet


def _plan(event_type, data, member, now=LATE):
    return {p.channel: p for p in plan_deliveries(EventView("evt_1", event_type, data), [member], RULES, now)}


def test_a_channel_turned_off_for_a_category_is_skipped_with_the_reason_even_when_urgent():
    member = _parent(channels={"concern": ["email"]})
    for severity in ("low", "urgent"):
        plan = _plan("concern.raised", {"summary": "s", "severity": severity}, member)
        assert plan["sms"].skip_reason.startswith(SKIP_PREFERENCE_OFF)
        assert plan["sms"].skip_reason == "preference_off: the member turned sms off for concern events"
        assert plan["email"].skip_reason is None
    # other categories keep every channel
    plan = _plan("medication.changed", {"medication": "m", "change": "started"}, member)
    assert plan["sms"].skip_reason is None and plan["email"].skip_reason is None


def test_quiet_hours_defer_non_urgent_but_not_urgent_concerns_or_bypassing_rules():
    member = _parent(quiet_hours=NIGHT)
    plan = _plan("medication.changed", {"medication": "m", "change": "started"}, member)
    assert {(p.hold, p.not_before) for p in plan.values()} == {(Hold.QUIET_HOURS, _utc(2027, 6, 2, 6, 0))}
    urgent = _plan("concern.raised", {"summary": "s", "severity": "urgent"}, member)
    assert all(p.not_before is None and p.hold is None for p in urgent.values())
    seizure = _plan("concern.raised", {"summary": "s", "severity": "low", "area": "seizure"}, member)
    assert seizure["sms"].not_before is None  # a rule marked bypass_quiet_hours names sms
    assert seizure["email"].hold == Hold.QUIET_HOURS  # ...not email: that one waits
    # daytime: nothing waits
    day = _plan(
        "medication.changed", {"medication": "m", "change": "started"}, member, _utc(2027, 6, 1, 11, 0)
    )
    assert all(p.not_before is None for p in day.values())


def test_a_member_on_digest_gets_low_priority_events_in_it_and_the_rest_at_once():
    member = _parent(mode="digest", digest_hour=18)
    now = _utc(2027, 6, 1, 9, 0)  # 10:00 BST
    goal = _plan("goal.updated", {"goal": "g", "status": "met"}, member, now)
    assert {(p.hold, p.digest_window, p.not_before) for p in goal.values()} == {
        (Hold.DIGEST, "2027-06-01", _utc(2027, 6, 1, 17, 0))
    }
    meds = _plan("medication.changed", {"medication": "m", "change": "started"}, member, now)
    assert all(p.hold is None and p.not_before is None for p in meds.values())


def test_preferences_refuse_what_they_cannot_mean():
    from pydantic import ValidationError

    for bad in (
        {"quiet_hours": {"start": "21:00", "end": "21:00"}},
        {"quiet_hours": {"start": "24:00", "end": "07:00"}},
        {"channels": {"concern": ["sms", "sms"]}},
        {"channels": {"billing": ["sms"]}},
        {"digest_hour": 24},
        {"mode": "weekly"},
    ):
        with pytest.raises(ValidationError):
            prefs.Preferences.model_validate(bad)


# --- The API ------------------------------------------------------------------------------------


def test_preferences_through_the_api(api, team, client):
    nb, m = team
    url = f"/v1/members/{m['mom']['id']}/preferences"
    got = api.get(url)
    assert got["mode"] == "immediate" and got["quiet_hours"] is None and got["timezone"] == "America/Chicago"
    assert got["channels"]["concern"] == ["sms", "email", "calendar"]
    body = {
        "channels": {"therapy": [], "concern": ["sms"]},
        "quiet_hours": {"start": "21:00", "end": "07:00"},
        "mode": "digest",
        "digest_hour": 19,
    }
    response = client.put(url, json=body, headers=api.headers)
    assert response.status_code == 200, response.get_json()
    put = response.get_json()
    assert put == api.get(url)
    assert put["channels"]["therapy"] == [] and put["channels"]["concern"] == ["sms"]
    assert put["channels"]["goal"] == ["sms", "email", "calendar"]
    assert put["digest_categories"] == ["therapy", "goal", "note"] and put["digest_hour"] == 19
    # bad input: 422 naming the field; nothing changed
    bad = client.put(url, json={"quiet_hours": {"start": "9pm", "end": "07:00"}}, headers=api.headers)
    assert bad.status_code == 422 and "quiet_hours.start" in bad.get_json()["fields"]
    bad = client.put(url, json={"digest_hour": "19"}, headers=api.headers)
    assert bad.status_code == 422 and "digest_hour" in bad.get_json()["fields"]
    assert api.get(url) == put
    # {} restores the defaults
    assert client.put(url, json={}, headers=api.headers).get_json()["mode"] == "immediate"
    # another notebook's key reaches neither
    other = api.notebook()
    key = api.post(f"/v1/notebooks/{other['id']}/keys", {"name": "other"})["key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get(url, headers=headers).status_code == 404
    assert client.put(url, json={}, headers=headers).status_code == 404
    assert client.get("/v1/members/mem_nope/preferences", headers=api.headers).status_code == 404


# --- The whole loop: real Redis, RQ's scheduler, a controllable clock ---------------------------


@pytest.fixture
def loop(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    yield app.extensions["careloop"].runtime, api
    close_app(app)


_run_worker = run_worker_once


def _deliveries(url, **where):
    with session_scope(url) as session:
        query = select(Delivery)
        for name, value in where.items():
            query = query.where(getattr(Delivery, name) == value)
        return list(session.scalars(query).all())


def _family(api, zone):
    nb = api.notebook(timezone="America/Chicago")
    mom = api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org", timezone=zone)
    dad = api.member(nb["id"], "Sam Rivera", "parent", email="sam@example.org", phone="+15555550102")
    return nb, mom, dad


@pytest.mark.parametrize(
    ("zone", "evening", "window_end"),
    [
        # 23:30 CST the night Chicago springs forward → 07:00 CDT
        ("America/Chicago", _utc(2027, 3, 14, 5, 30), _utc(2027, 3, 14, 12, 0)),
        # 22:00 GMT the night London springs forward → 07:00 BST
        ("Europe/London", _utc(2027, 3, 27, 22, 0), _utc(2027, 3, 28, 6, 0)),
    ],
)
def test_quiet_hours_defer_a_delivery_across_the_dst_change_then_rq_sends_it_once(
    loop, pg_only_url, smtp, zone, evening, window_end
):
    runtime, api = loop
    with time_machine.travel(evening, tick=True):
        nb, mom, dad = _family(api, zone)
        api.client.put(
            f"/v1/members/{mom['id']}/preferences",
            json={"quiet_hours": {"start": "21:00", "end": "07:00"}},
            headers=api.headers,
        )
        # a medication change by dad → mom by email (she has no phone: her sms is skipped)
        api.event(
            nb["id"],
            "medication.changed",
            {"medication": "m", "change": "started"},
            author_member_id=dad["id"],
        )
        _run_worker(runtime)
        (d,) = _deliveries(pg_only_url, member_id=mom["id"], channel="email")
        assert (d.status, d.hold, d.next_attempt_at) == ("queued", "quiet_hours", window_end)
        shown = api.get(f"/v1/deliveries/{d.id}")
        assert shown["held_for"] == "quiet_hours"
        assert shown["next_attempt_at"] == window_end.isoformat().replace("+00:00", "Z")
        # RQ's scheduler holds its job for that moment (RQ keeps whole seconds: rounded up, never early)
        (job_id,) = runtime.dispatcher.queue("email").scheduled_job_registry.get_job_ids()
        scheduled = runtime.dispatcher.queue("email").scheduled_job_registry.get_scheduled_time(job_id)
        assert window_end <= scheduled <= window_end + timedelta(seconds=1)
    with time_machine.travel(window_end - timedelta(minutes=1), tick=True):
        _run_worker(runtime)
        assert _deliveries(pg_only_url, id=d.id)[0].status == "queued"
        assert smtp.messages == []
    with time_machine.travel(window_end + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        _run_worker(runtime)  # a second run (and relay sweep) sends nothing more
    (sent,) = _deliveries(pg_only_url, id=d.id)
    assert (sent.status, sent.attempts) == ("sent", 1)
    assert [str(m["To"].addresses[0].addr_spec) for m in smtp.messages] == ["dana@example.org"]


def test_urgent_concerns_and_bypassing_rules_go_at_once_in_quiet_hours_and_a_channel_off_is_skipped(
    loop, pg_only_url, smtp, twilio_proxy
):
    runtime, api = loop
    night = _utc(2027, 1, 15, 5, 0)  # 23:00 CST
    with time_machine.travel(night, tick=True):
        nb, mom, dad = _family(api, "America/Chicago")
        api.client.put(
            f"/v1/members/{dad['id']}/preferences",
            json={"quiet_hours": {"start": "21:00", "end": "07:00"}, "channels": {"medication": ["email"]}},
            headers=api.headers,
        )
        urgent = api.event(
            nb["id"], "concern.raised", {"summary": "s", "severity": "urgent"}, author_member_id=mom["id"]
        )
        seizure = api.event(
            nb["id"],
            "concern.raised",
            {"summary": "s", "severity": "low", "area": "seizure"},
            author_member_id=mom["id"],
        )
        meds = api.event(
            nb["id"],
            "medication.changed",
            {"medication": "m", "change": "started"},
            author_member_id=mom["id"],
        )
        _run_worker(runtime)
        got = {(d.event_id, d.channel): d for d in _deliveries(pg_only_url, member_id=dad["id"])}
        # the urgent concern: both channels at once
        assert got[(urgent["id"], "sms")].status == "sent" and got[(urgent["id"], "email")].status == "sent"
        # a seizure (the shipped rule bypasses quiet hours): at once too
        assert got[(seizure["id"], "sms")].status == "sent" and got[(seizure["id"], "email")].status == "sent"
        # the medication change: sms turned off → skipped with the reason; email waits for 07:00 CST
        assert got[(meds["id"], "sms")].status == "skipped"
        assert got[(meds["id"], "sms")].error.startswith("preference_off")
        email = got[(meds["id"], "email")]
        assert (email.status, email.hold, email.next_attempt_at) == (
            "queued",
            "quiet_hours",
            _utc(2027, 1, 15, 13, 0),
        )
    assert len(twilio_proxy.sent) == 2 and len(smtp.messages) == 2


# --- Digests: exactly one per member, channel and local day -------------------------------------


def test_an_empty_digest_is_not_sent(loop, pg_only_url, smtp):
    from careloop import digests as dg
    from careloop.workers.digests import send_digest

    runtime, api = loop
    nb, mom, _ = _family(api, "UTC")
    with session_scope(pg_only_url) as session:
        slot = dg.Slot(nb["id"], mom["id"], "email", "2027-06-01", utcnow() - timedelta(seconds=1))
        ((digest_id, _),) = dg.ensure(session, [slot]).values()
        session.commit()
    assert send_digest(digest_id, runtime=runtime) == "empty"
    assert send_digest(digest_id, runtime=runtime) == "not-claimed"
    assert smtp.messages == []


def test_one_digest_with_two_workers_and_100_concurrent_low_priority_events(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    """100 therapy logs posted at once, routed by two `careloop worker` processes: mom (on
    digest) gets one email listing all 100 when her hour comes, however many times and by
    however many workers the digest's job runs; dad turned email off for therapy: 100 skipped."""
    from werkzeug.serving import make_server

    from careloop.workers.digests import send_digest

    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy, relay_interval=0.2)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    workers = []
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        nb, mom, dad = _family(api, "UTC")
        pt = api.member(nb["id"], "Alex Kim", "physical_therapy", email="alex@example.org")
        hour = (utcnow() + timedelta(hours=2)).hour  # her digest is an hour or two away
        for member, body in (
            (mom, {"mode": "digest", "digest_hour": hour}),
            (dad, {"channels": {"therapy": ["sms"]}}),
        ):
            response = api.client.put(
                f"/v1/members/{member['id']}/preferences", json=body, headers=api.headers
            )
            assert response.status_code == 200
        workers = [start_worker(env, log), start_worker(env, log)]
        url = f"http://127.0.0.1:{server.server_port}/v1/notebooks/{nb['id']}/events"

        def post(i):
            body = {
                "type": "therapy.logged",
                "data": {"discipline": "physical_therapy", "activity": f"stairs {i}"},
                "author_member_id": pt["id"],
            }
            request = urllib.request.Request(
                url,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status

        with ThreadPoolExecutor(max_workers=20) as pool:
            assert set(pool.map(post, range(100))) == {202}

        def routed():
            rows = _deliveries(pg_only_url)
            return len(rows) == 200 and rows

        rows = wait_until(routed, timeout=120, message="100 events routed")
        mine = [d for d in rows if d.member_id == mom["id"]]
        assert len(mine) == 100 and {d.status for d in mine} == {"queued"}
        assert {d.hold for d in mine} == {"digest"}
        assert all(d.error.startswith("preference_off") for d in rows if d.member_id == dad["id"])
        with session_scope(pg_only_url) as session:
            (digest,) = session.scalars(select(Digest)).all()
        assert {d.digest_id for d in mine} == {digest.id} and digest.status == "pending"
        assert smtp.messages == []  # nothing before her hour

        # Her hour comes: the digest is due, and its job runs several times over on both workers.
        with session_scope(pg_only_url) as session:
            session.execute(update(Digest).values(due_at=utcnow()))
        for _ in range(3):
            runtime.dispatcher.queue("email").enqueue(send_digest, digest.id)

        def sent():
            with session_scope(pg_only_url) as session:
                return session.get(Digest, digest.id).status == "sent"

        wait_until(sent, timeout=60, message="the digest sent")
        wait_until(
            lambda: all(d.status == "sent" for d in _deliveries(pg_only_url, member_id=mom["id"])), timeout=30
        )
        # give both workers' relays a few more sweeps to send anything twice
        deadline = utcnow() + timedelta(seconds=2)
        wait_until(lambda: utcnow() > deadline, timeout=5)
    finally:
        for proc in workers:
            stop_worker(proc)
        server.shutdown()
        close_app(app)
    assert len(smtp.messages) == 1, [m["Subject"] for m in smtp.messages]
    (message,) = smtp.messages
    assert str(message["To"].addresses[0].addr_spec) == "dana@example.org"
    assert message["Subject"].startswith("Daily digest for Maya") and "100 updates" in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    assert text.count("https://careloop.test/m/") == 100
    assert "stairs" not in text  # kinds and links only: what a session was about stays behind the link
    mine = _deliveries(pg_only_url, member_id=mom["id"])
    assert {d.provider_id for d in mine} == {str(message["Message-ID"])}
    assert all(d.attempts == 1 for d in mine)
    with session_scope(pg_only_url) as session:
        assert session.get(Digest, digest.id).attempts == 1


def _goal(api, nb, author, goal="Walks the length of the hall"):
    return api.event(
        nb["id"], "goal.updated", {"goal": goal, "status": "progress"}, author_member_id=author["id"]
    )


def _digest_mails(smtp):
    return [m for m in smtp.messages if str(m["Message-ID"]).startswith("<dig_")]


def test_a_daily_digest_goes_out_at_the_members_hour_and_a_later_event_waits_for_the_next_day(
    loop, pg_only_url, smtp
):
    runtime, api = loop
    morning = _utc(2027, 6, 1, 9, 0)  # 10:00 in London (BST)
    six_pm = _utc(2027, 6, 1, 17, 0)
    with time_machine.travel(morning, tick=True):
        nb, mom, dad = _family(api, "Europe/London")
        url = f"/v1/members/{mom['id']}/preferences"
        assert api.client.put(url, json={"mode": "digest"}, headers=api.headers).status_code == 200
        first, second = _goal(api, nb, dad), _goal(api, nb, dad, "Names five colours")
        _run_worker(runtime)
        rows = _deliveries(pg_only_url, member_id=mom["id"])
        assert {(d.status, d.hold, d.next_attempt_at) for d in rows} == {("queued", "digest", six_pm)}
        assert {d.event_id for d in rows} == {first["id"], second["id"]}
        shown = api.get(f"/v1/events/{first['id']}")["deliveries"][0]
        assert shown["held_for"] == "digest" and shown["digest_id"] == rows[0].digest_id
    with time_machine.travel(six_pm - timedelta(seconds=30), tick=True):
        _run_worker(runtime)
        assert smtp.messages == []
    with time_machine.travel(six_pm + timedelta(seconds=2), tick=True):
        _run_worker(runtime)
        (mail,) = smtp.messages
        assert "2 updates" in mail["Subject"] and "Tue 1 Jun" in mail["Subject"]
        text = mail.get_body(("plain",)).get_content()
        assert text.count("A goal update") == 2 and "hall" not in text and "colours" not in text
        # an event after her hour waits for tomorrow's digest
        late = _goal(api, nb, dad, "Climbs three stairs")
        _run_worker(runtime)
        (d,) = _deliveries(pg_only_url, event_id=late["id"])
        assert (d.status, d.next_attempt_at) == ("queued", six_pm + timedelta(days=1))
        assert len(smtp.messages) == 1
    with time_machine.travel(six_pm + timedelta(days=1, seconds=2), tick=True):
        _run_worker(runtime)
        assert len(smtp.messages) == 2 and "1 update" in smtp.messages[1]["Subject"]
    sent = _deliveries(pg_only_url, member_id=mom["id"])
    assert {d.status for d in sent} == {"sent"} and len({d.digest_id for d in sent}) == 2
    with session_scope(pg_only_url) as session:
        assert [(g.window, g.status) for g in session.scalars(select(Digest).order_by(Digest.window))] == [
            ("2027-06-01", "sent"),
            ("2027-06-02", "sent"),
        ]


def test_an_event_for_a_digest_already_going_out_joins_the_next_one(loop, pg_only_url):
    runtime, api = loop
    with time_machine.travel(_utc(2027, 6, 1, 9, 0), tick=True):
        nb, mom, dad = _family(api, "Europe/London")
        api.client.put(f"/v1/members/{mom['id']}/preferences", json={"mode": "digest"}, headers=api.headers)
        _goal(api, nb, dad)
        _run_worker(runtime)
        with session_scope(pg_only_url) as session:  # its worker has taken it, as if its hour came
            session.execute(update(Digest).values(status="sending", claim_token="elsewhere"))
        later = _goal(api, nb, dad, "Another")
        _run_worker(runtime)
        (d,) = _deliveries(pg_only_url, event_id=later["id"])
        with session_scope(pg_only_url) as session:
            assert session.get(Digest, d.digest_id).window == "2027-06-02"
        assert d.next_attempt_at == _utc(2027, 6, 2, 17, 0)


def _due_digest(runtime, api, pg_only_url, events=2):
    """A digest of ``events`` goal updates for mom, made due now and handed to RQ."""
    from careloop.queues import DigestJob

    nb, mom, dad = _family(api, "UTC")
    api.client.put(f"/v1/members/{mom['id']}/preferences", json={"mode": "digest"}, headers=api.headers)
    for i in range(events):
        _goal(api, nb, dad, f"goal {i}")
    _run_worker(runtime)
    with session_scope(pg_only_url) as session:
        session.execute(update(Digest).values(due_at=utcnow()))
        (digest,) = session.scalars(select(Digest)).all()
    runtime.dispatcher.digests([DigestJob(digest.id, "email", digest.due_at)])
    return digest.id, mom


def test_a_digest_refused_for_now_is_retried_and_sent_once(loop, pg_only_url, smtp):
    runtime, api = loop
    smtp.script("451 4.3.0 Try again later")
    digest_id, mom = _due_digest(runtime, api, pg_only_url)

    def sent():
        _run_worker(runtime)
        with session_scope(pg_only_url) as session:
            return session.get(Digest, digest_id).status == "sent"

    wait_until(sent, timeout=30, message="the digest sent on a retry")
    assert len(smtp.messages) == 1 and len(smtp.refused) == 1
    with session_scope(pg_only_url) as session:
        assert session.get(Digest, digest_id).attempts == 2
    rows = _deliveries(pg_only_url, member_id=mom["id"])
    assert {(d.status, d.provider_id) for d in rows} == {("sent", str(smtp.messages[0]["Message-ID"]))}


def test_a_digest_refused_for_good_fails_its_deliveries_and_each_can_be_sent_alone(loop, pg_only_url, smtp):
    runtime, api = loop
    smtp.script("550 5.1.1 No such mailbox")
    digest_id, mom = _due_digest(runtime, api, pg_only_url)
    _run_worker(runtime)
    with session_scope(pg_only_url) as session:
        assert session.get(Digest, digest_id).status == "failed"
    rows = _deliveries(pg_only_url, member_id=mom["id"])
    assert {d.status for d in rows} == {"failed"} and all("550" in d.error for d in rows)
    response = api.client.post(f"/v1/deliveries/{rows[0].id}/retry", headers=api.headers)
    assert response.status_code == 202, response.get_json()
    _run_worker(runtime)
    (alone,) = _deliveries(pg_only_url, id=rows[0].id)
    assert (alone.status, alone.digest_id) == ("sent", None)
    (mail,) = smtp.messages
    assert str(mail["Message-ID"]).startswith(f"<{alone.id}.")  # its own message, not a digest
    assert _deliveries(pg_only_url, id=rows[1].id)[0].status == "failed"


def test_bypass_quiet_hours_in_a_rules_file_must_be_true_or_false():
    from careloop.rules import RulesError

    rule = {"name": "r", "when": {"type": "goal.updated"}, "notify": ["parent"], "channels": ["sms"]}
    assert parse_rules({"rules": [rule]}).rules[0].bypass_quiet_hours is False
    assert parse_rules({"rules": [{**rule, "bypass_quiet_hours": True}]}).rules[0].bypass_quiet_hours is True
    with pytest.raises(RulesError, match="rule 'r': bypass_quiet_hours must be true or false"):
        parse_rules({"rules": [{**rule, "bypass_quiet_hours": "yes"}]})


def test_a_due_digest_whose_job_redis_lost_is_handed_over_by_the_relay_and_sent_once(
    loop, pg_only_url, smtp, redis_conn
):
    runtime, api = loop
    digest_id, mom = _due_digest(runtime, api, pg_only_url)
    redis_conn.flushdb()  # Redis restarted empty: the digest's job is gone
    _run_worker(runtime)  # the relay notices and hands it over; the worker sends it
    _run_worker(runtime)
    with session_scope(pg_only_url) as session:
        assert session.get(Digest, digest_id).status == "sent"
    assert len(_digest_mails(smtp)) == 1


def test_a_digest_whose_worker_vanished_before_calling_the_provider_is_sent_once(loop, pg_only_url, smtp):
    from careloop import digests as dg

    runtime, api = loop
    digest_id, mom = _due_digest(runtime, api, pg_only_url)
    with session_scope(pg_only_url) as session:  # a worker claimed it, then died
        assert dg.claim(session, digest_id, "dead-worker") == 1
        assert len(dg.claim_deliveries(session, digest_id, "dead-worker")) == 2
        long_ago = utcnow() - timedelta(seconds=runtime.settings.claim_timeout + 1)
        session.execute(update(Digest).values(claimed_at=long_ago))
        session.commit()
    _run_worker(runtime)  # the job finds it taken; the relay finds the claim stale and frees it
    _run_worker(runtime)
    with session_scope(pg_only_url) as session:
        digest = session.get(Digest, digest_id)
        assert (digest.status, digest.attempts) == ("sent", 1)
    assert len(_digest_mails(smtp)) == 1
    assert {d.status for d in _deliveries(pg_only_url, member_id=mom["id"])} == {"sent"}
