"""CalDAV publishing against a real Radicale: a notebook's check-ins are written to its calendar,
rewritten when they or one occurrence change, removed when cancelled, and what the calendar
holds is read back with the ``caldav`` library and vobject (Radicale's own parser) — times
as careloop meant them. A failed write is tried again until the calendar takes it."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta

import caldav
import pytest
import time_machine
import vobject

from careloop.db import session_scope
from careloop.models import CaldavCalendar
from careloop.workers.relay import relay_once
from tests.conftest import (
    REDIS_URL,
    build_app,
    build_team,
    close_app,
    make_settings,
    run_rq_until_settled,
    wait_until,
)
from tests.log_leaks import every_log_line, leaks
from tests.peers.radicale_peer import free_port, start_radicale
from tests.test_invites import SECOND_TUESDAYS, series_data


@pytest.fixture
def radicale(tmp_path):
    server = start_radicale(tmp_path / "radicale")
    yield server
    server.stop()


def read_back(url: str, user: str, password: str) -> list:
    """Every VEVENT on the calendar, read by the caldav library and parsed by vobject."""
    with caldav.DAVClient(url=url, username=user, password=password, timeout=10) as client:
        objects = client.calendar(url=url).events()
        return [v for o in objects for v in vobject.readOne(o.data).vevent_list]


def configure(api, nb_id: str, url: str, user: str, password: str) -> dict:
    response = api.client.put(
        f"/v1/notebooks/{nb_id}/caldav",
        json={"url": url, "username": user, "password": password},
        headers=api.headers,
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def rq_caldav(db_url, tmp_path, redis_conn):
    settings = make_settings(db_url, tmp_path, redis_url=REDIS_URL, allow_private_webhooks=True)
    app, api = build_app(settings)
    yield app, api
    close_app(app)


def test_check_ins_published_moved_cancelled_by_rq(rq_caldav, radicale, caplog):
    app, api = rq_caldav
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    url = radicale.make_calendar("/careloop/maya/")
    caplog.set_level(logging.DEBUG)
    shown = configure(api, nb["id"], url, radicale.user, radicale.password)
    assert shown["has_password"] is True and "password" not in shown and shown["url"] == url
    got = api.get(f"/v1/notebooks/{nb['id']}/caldav")
    assert radicale.password not in str(got) and got["username"] == radicale.user

    attendees = [m["mom"]["id"], m["slp"]["id"]]
    api.event(nb["id"], "checkin.scheduled", series_data(attendees))
    one_off = datetime(2027, 2, 3, 15, 30, tzinfo=UTC)
    api.event(
        nb["id"],
        "checkin.scheduled",
        {
            "checkin_id": "intake",
            "title": "Intake visit",
            "start": one_off.isoformat(),
            "end": (one_off + timedelta(hours=1)).isoformat(),
            "attendees": attendees,
        },
    )
    run_rq_until_settled(runtime)
    events = read_back(url, radicale.user, radicale.password)
    by_summary = {e.summary.value: e for e in events}
    assert set(by_summary) == {"Monthly team check-in", "Intake visit"}
    series = by_summary["Monthly team check-in"]
    assert list(series.getrruleset(addRDate=True)) == SECOND_TUESDAYS
    assert series.dtstart.value == SECOND_TUESDAYS[0] and str(series.dtstart.value.tzinfo) != "UTC"
    assert int(series.sequence.value) == 0 and series.status.value == "CONFIRMED"
    assert not hasattr(series, "attendee") and not hasattr(series, "organizer")
    assert by_summary["Intake visit"].dtstart.value == one_off
    uid = series.uid.value

    # one occurrence moved, another cancelled: the resource is rewritten with both exceptions
    march, may = SECOND_TUESDAYS[2], SECOND_TUESDAYS[4]
    moved_to = march + timedelta(days=7, hours=1)
    moved = series_data(attendees, occurrence=march.isoformat(), start=moved_to.isoformat())
    moved["end"] = (moved_to + timedelta(minutes=45)).isoformat()
    moved["recurrence"] = None
    api.event(nb["id"], "checkin.updated", moved)
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "monthly", "occurrence": may.isoformat()})
    with every_log_line() as lines:
        run_rq_until_settled(runtime)
    credentials = base64.b64encode(f"{radicale.user}:{radicale.password}".encode()).decode()
    secrets = {"password": [radicale.password, credentials], "title": ["Monthly team check-in"]}
    assert lines and not leaks(lines, secrets)
    events = [e for e in read_back(url, radicale.user, radicale.password) if e.uid.value == uid]
    master = next(e for e in events if not hasattr(e, "recurrence_id"))
    overrides = {e.recurrence_id.value: e for e in events if hasattr(e, "recurrence_id")}
    assert list(master.getrruleset(addRDate=True)) == SECOND_TUESDAYS
    assert set(overrides) == {march, may}
    assert overrides[march].dtstart.value == moved_to and overrides[march].status.value == "CONFIRMED"
    assert int(overrides[march].sequence.value) == 1
    assert overrides[may].dtstart.value == may and overrides[may].status.value == "CANCELLED"
    assert int(overrides[may].sequence.value) == 2

    # cancelled whole: gone from the calendar; the other check-in stays
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "monthly"})
    run_rq_until_settled(runtime)
    left = read_back(url, radicale.user, radicale.password)
    assert [e.summary.value for e in left] == ["Intake visit"]
    state = api.get(f"/v1/notebooks/{nb['id']}/caldav")
    assert state["pending"] == 0 and state["last_error"] is None and state["last_published_at"]
    assert radicale.password not in caplog.text


def test_a_failed_publish_is_tried_again_until_the_calendar_takes_it(db_url, tmp_path, caplog):
    settings = make_settings(db_url, tmp_path, allow_private_webhooks=True)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}/careloop/team/"
    caplog.set_level(logging.DEBUG)
    configure(api, nb["id"], url, "careloop", "s3cret-pw")
    api.event(nb["id"], "checkin.scheduled", series_data([m["mom"]["id"]]))

    state = wait_until(
        lambda: (s := api.get(f"/v1/notebooks/{nb['id']}/caldav"))["last_error"] and s,
        message="a failed publish",
    )
    assert state["pending"] == 1 and "ConnectionError" in state["last_error"]

    server = start_radicale(tmp_path / "radicale", port=port)
    try:
        server.make_calendar("/careloop/team/")
        # after the claim timeout the relay hands the same, still pending entry over again
        with time_machine.travel(datetime.now(UTC) + timedelta(seconds=settings.claim_timeout + 1)):
            relay_once(runtime)
            wait_until(lambda: api.get(f"/v1/notebooks/{nb['id']}/caldav")["pending"] == 0, message="retry")
        state = api.get(f"/v1/notebooks/{nb['id']}/caldav")
        assert state["last_error"] is None and state["last_published_at"]
        (series,) = read_back(url, server.user, server.password)
        assert list(series.getrruleset(addRDate=True)) == SECOND_TUESDAYS
    finally:
        server.stop()
        close_app(app)
    assert "s3cret-pw" not in caplog.text


def test_caldav_settings_are_checked_and_forgotten(api, team, settings):
    nb, _ = team
    bad = api.client.put(
        f"/v1/notebooks/{nb['id']}/caldav",
        json={"url": "ftp://dav.example.org/cal/"},
        headers=api.headers,
    )
    assert bad.status_code == 422 and "url" in str(bad.get_json())
    private = api.client.put(
        f"/v1/notebooks/{nb['id']}/caldav",
        json={"url": "http://127.0.0.1:5232/careloop/cal/"},
        headers=api.headers,
    )
    assert private.status_code == 422 and "private" in str(private.get_json())
    assert api.client.get(f"/v1/notebooks/{nb['id']}/caldav", headers=api.headers).status_code == 404
    assert api.client.delete(f"/v1/notebooks/{nb['id']}/caldav", headers=api.headers).status_code == 204
    with session_scope(settings.database_url) as session:
        assert session.get(CaldavCalendar, nb["id"]) is None
