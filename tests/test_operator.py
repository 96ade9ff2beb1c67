"""What operators use, in process on real databases and Redis: request ids, ``/readyz``,
``/metrics`` (its protection and the queue depths read at a scrape), and the operator CLI —
``deliveries failed`` without contact details, ``queues``, ``replay`` and ``import``."""

from __future__ import annotations

import json
import logging
import re
import socket
import time

from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer
from sqlalchemy import select, text

from careloop.db import get_engine, session_scope
from careloop.models import Delivery, Event, OutboxEntry
from tests.conftest import ADMIN_KEY, REDIS_URL, build_app, close_app, make_settings
from tests.test_cli import _email_team, _therapy_log, cli_env, invoke, rq_mode  # noqa: F401 (a fixture)

METRICS_TOKEN = "scrape-token-0123456789abcdef"
GOAL = {"goal": "Walks to the bus stop", "status": "progress"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def scrape(client, token=METRICS_TOKEN) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# --- request ids ------------------------------------------------------------------------------------


def test_a_request_id_is_taken_when_printable_and_short_else_made_and_kept_with_the_event(api, team, db_url):
    nb, members = team
    made = re.compile(r"[0-9a-f]{32}")
    for given in ("abc-123", "a b/c:d", "x" * 128):
        response = api.client.post(
            f"/v1/notebooks/{nb['id']}/events",
            json={"type": "goal.updated", "data": GOAL},
            headers={**api.headers, "X-Request-ID": given},
        )
        assert response.status_code == 202 and response.headers["X-Request-ID"] == given
        with session_scope(db_url) as session:
            assert session.get(Event, response.get_json()["id"]).context == {"request_id": given}
    for refused in ("x" * 129, "tab\there", " leading", "trailing ", "caf\u00e9", ""):
        response = api.client.get(
            f"/v1/notebooks/{nb['id']}", headers={**api.headers, "X-Request-ID": refused}
        )
        assert made.fullmatch(response.headers["X-Request-ID"]), refused
    # every answer carries one: no header, a 401, a 404
    for response in (
        api.client.get("/healthz"),
        api.client.get(f"/v1/notebooks/{nb['id']}"),
        api.client.get("/v1/notebooks/nb_nothere", headers=api.headers),
    ):
        assert made.fullmatch(response.headers["X-Request-ID"])
    two = {api.client.get("/healthz").headers["X-Request-ID"] for _ in range(2)}
    assert len(two) == 2


# --- /readyz ----------------------------------------------------------------------------------------


def test_readyz_names_the_part_that_is_not_ready_and_never_why(db_url, tmp_path):
    app, _ = build_app(make_settings(db_url, tmp_path))
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "status": "ready",
        "database": "ok",
        "queue": "not_configured",
        "migrations": "at_head",
        "failing": [],
    }
    # a schema behind this release's migrations
    with get_engine(db_url).begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0001_initial'"))
    try:
        behind = client.get("/readyz")
        assert behind.status_code == 503
        assert behind.get_json()["migrations"] == "behind" and behind.get_json()["failing"] == ["migrations"]
    finally:
        with get_engine(db_url).begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").status_code == 200
    close_app(app)

    # Redis configured but not answering: not ready (liveness stays up: intake still works)
    app, _ = build_app(make_settings(db_url, tmp_path, redis_url=f"redis://127.0.0.1:{_closed_port()}/0"))
    client = app.test_client()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json() == {
        "status": "not_ready",
        "database": "ok",
        "queue": "unreachable",
        "migrations": "at_head",
        "failing": ["queue"],
    }
    assert client.get("/healthz").status_code == 200


def test_readyz_with_redis_answering(db_url, tmp_path, redis_conn):
    app, _ = build_app(make_settings(db_url, tmp_path, redis_url=REDIS_URL))
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["queue"] == "ok"


# --- /metrics ---------------------------------------------------------------------------------------


def test_metrics_answer_only_the_metrics_token_or_the_admin_key(db_url, tmp_path):
    app, api = build_app(make_settings(db_url, tmp_path, metrics_token=METRICS_TOKEN))
    client = app.test_client()
    nb = api.notebook()
    notebook_key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "clinic"})["key"]
    for headers in ({}, {"Authorization": f"Bearer {notebook_key}"}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {METRICS_TOKEN}"}):  # fmt: skip
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    for token in (METRICS_TOKEN, ADMIN_KEY):
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.mimetype == "text/plain"
        assert "careloop_events_accepted" in answer.get_data(as_text=True)
    close_app(app)
    # without a metrics token, only the admin key
    app, _ = build_app(make_settings(db_url, tmp_path))
    client = app.test_client()
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_queue_depth_and_oldest_age_are_read_from_redis_at_the_scrape(db_url, tmp_path, redis_conn):
    app, api = build_app(make_settings(db_url, tmp_path, redis_url=REDIS_URL, metrics_token=METRICS_TOKEN))
    nb = api.notebook()
    before = scrape(app.test_client())
    assert before[("careloop_queue_up", ())] == 1
    assert before[("careloop_queue_depth", (("queue", "careloop-test-route"),))] == 0
    api.event(nb["id"], "goal.updated", GOAL)  # no worker runs: its routing job waits
    api.event(nb["id"], "goal.updated", GOAL)
    found = scrape(app.test_client())
    route = (("queue", "careloop-test-route"),)
    assert found[("careloop_queue_depth", route)] == 2
    assert found[("careloop_queue_oldest_job_age_seconds", route)] > 0
    assert found[("careloop_queue_depth", (("queue", "careloop-test-sms"),))] == 0
    accepted = ("careloop_events_accepted_total", (("source", "api"), ("type", "goal.updated")))
    assert found[accepted] - before.get(accepted, 0) == 2
    close_app(app)

    # Redis gone: the scrape still answers, at once, and says so
    app, _ = build_app(
        make_settings(
            db_url, tmp_path, redis_url=f"redis://127.0.0.1:{_closed_port()}/0", metrics_token=METRICS_TOKEN
        )
    )
    started = time.monotonic()
    found = scrape(app.test_client())
    assert time.monotonic() - started < 3
    assert found[("careloop_queue_up", ())] == 0
    assert not [key for key in found if key[0] == "careloop_queue_depth"]


# --- the operator CLI -------------------------------------------------------------------------------


def test_deliveries_failed_shows_no_contact_detail(rq_mode, smtp, db_url):  # noqa: F811
    from tests.conftest import run_rq_until_settled

    settings, app, api, nb, team = rq_mode
    smtp.fail_always("550 5.1.1 <dana@example.org>: Recipient address rejected")
    _therapy_log(api, nb, team)
    run_rq_until_settled(app.extensions["careloop"].runtime)
    for args in (("deliveries", "failed"), ("deliveries", "failed", "--json")):
        listed = invoke(*args, env=cli_env(settings))
        assert listed.exit_code == 0, listed.output
        assert listed.output.count("dlv_") >= 2 and "550" in listed.output
        assert "@example.org" not in listed.output and "[email]" in listed.output
        assert "Dana" not in listed.output and "Rivera" not in listed.output


def test_queues_lists_depths_workers_and_failed_jobs(rq_mode, redis_conn, db_url):  # noqa: F811
    settings, app, api, nb, team = rq_mode
    env = cli_env(settings)
    _therapy_log(api, nb, team)  # its routing job waits: no worker runs
    # a job that fails, kept in the sms queue's failed registry; a worker registered on the queues
    broken = Queue("careloop-test-sms", connection=redis_conn, serializer=JSONSerializer)
    broken.enqueue("builtins.int", "not a number")
    SimpleWorker([broken], connection=redis_conn, serializer=JSONSerializer).work(burst=True)
    listening = Worker(
        [Queue(n, connection=redis_conn) for n in ("careloop-test-route", "careloop-test-sms")],
        connection=redis_conn,
        name="observer-1",
    )
    listening.register_birth()
    listening.set_state("idle")
    try:
        as_json = invoke("queues", "--json", env=env)
        shown = invoke("queues", env=env)
    finally:
        listening.register_death()
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    queues = {q["name"]: q for q in report["queues"]}
    assert queues["careloop-test-route"]["waiting"] == 1
    assert queues["careloop-test-route"]["oldest_age_seconds"] is not None
    assert queues["careloop-test-sms"]["failed"] == 1 and queues["careloop-test-sms"]["waiting"] == 0
    assert queues["careloop-test-email"] == {
        "name": "careloop-test-email", "waiting": 0, "oldest_age_seconds": None, "scheduled": 0,
        "started": 0, "failed": 0,
    }  # fmt: skip
    assert [w["name"] for w in report["workers"]] == ["observer-1"]
    assert report["workers"][0]["state"] == "idle"
    assert report["mode"] == "rq"
    assert shown.exit_code == 0, shown.output
    route_line = next(line for line in shown.stdout.splitlines() if line.startswith("careloop-test-route "))
    assert route_line.split()[1] == "1"
    sms_line = next(line for line in shown.stdout.splitlines() if line.startswith("careloop-test-sms "))
    assert sms_line.split()[-1] == "1"
    assert "workers: 1" in shown.stdout and "observer-1" in shown.stdout


def test_queues_in_the_embedded_mode_and_with_redis_down(tmp_path, db_url):
    settings = make_settings(db_url, tmp_path)
    embedded = invoke("queues", env=cli_env(settings))
    assert embedded.exit_code == 0, embedded.output
    assert "embedded mode" in embedded.stdout and "deliveries in the database" in embedded.stdout
    down = make_settings(db_url, tmp_path, redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    result = invoke("queues", env=cli_env(down))
    assert result.exit_code == 1 and "Redis unreachable" in result.stderr
    assert "Traceback" not in result.output


def test_replay_plans_only_what_is_new_and_sends_nothing_twice(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)
    app, api = build_app(settings)
    nb = api.notebook()
    api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org")
    api.member(nb["id"], "Ms. Ortiz", "school", email="ortiz@example.org")
    event_id = api.event(nb["id"], "goal.updated", GOAL)["id"]
    assert app.extensions["careloop"].runtime.dispatcher.drain(timeout=30)
    emails = settings.outbox_dir / "email"
    assert len(list(emails.glob("*.eml"))) == 2
    # the team grew since: a replay tells the new parent, and nobody twice
    api.member(nb["id"], "Sam Rivera", "parent", email="sam@example.org")
    close_app(app)
    env = cli_env(settings)
    replayed = invoke("replay", event_id, env=env)
    assert replayed.exit_code == 0, replayed.output
    assert f"{event_id}: 1 new deliveries planned" in replayed.stdout
    with session_scope(db_url) as session:
        rows = session.scalars(select(Delivery).where(Delivery.event_id == event_id)).all()
    assert sorted((d.status, d.attempts) for d in rows) == [("sent", 1)] * 3
    assert len(list(emails.glob("*.eml"))) == 3
    again = invoke("replay", event_id, env=env)
    assert again.exit_code == 0 and f"{event_id}: 0 new deliveries planned" in again.stdout
    assert len(list(emails.glob("*.eml"))) == 3
    missing = invoke("replay", "evt_nothere", env=env)
    assert missing.exit_code == 2 and "evt_nothere: no such event" in missing.stderr


CSV = """type,occurred_at,author_member_id,data.goal,data.status,data
goal.updated,2024-03-01T09:00:00-06:00,,Walks to the bus stop,progress,
concern.raised,2024-03-02T09:00:00-06:00,,,,"{""summary"": ""Falls on the stairs"", ""severity"": ""low""}"
concern.raised,2024-03-03T09:00:00-06:00,,,,"{""summary"": ""x"", ""severity"": ""dire""}"
goal.updated,2024-03-04T09:00:00-06:00,mem_nothere,Climbs,new,
goal.updated,yesterday,,Climbs,new,
visit.logged,2024-03-05T09:00:00-06:00,,,,
"""


def _import(path, nb_id, settings, *extra):
    return invoke("import", str(path), "--notebook", nb_id, *extra, env=cli_env(settings))


def test_import_a_csv_history_checked_as_the_api_checks_and_never_twice(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)
    app, api = build_app(settings)
    nb = api.notebook()
    api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org", phone="+15555550101")
    close_app(app)
    path = tmp_path / "history.csv"
    path.write_text(CSV)

    result = _import(path, nb["id"], settings)
    assert result.exit_code == 1, result.output  # some rows were refused
    assert f"{path}: 6 rows: 2 accepted, 0 already imported, 4 rejected" in result.stdout
    assert "line 4: data.severity: Input should be 'low', 'medium', 'high' or 'urgent'" in result.stdout
    assert "line 5: author_member_id: is not a member of this notebook" in result.stdout
    assert re.search(r"line 6: occurred_at: .+", result.stdout)
    assert re.search(r"line 7: type: .+", result.stdout)
    assert "Falls on the stairs" not in result.output and "dire" not in result.output
    with session_scope(db_url) as session:
        events = session.scalars(select(Event).order_by(Event.occurred_at)).all()
        assert [(e.type, e.occurred_at.isoformat()) for e in events] == [
            ("goal.updated", "2024-03-01T15:00:00+00:00"),
            ("concern.raised", "2024-03-02T15:00:00+00:00"),
        ]
        assert events[0].data == GOAL
        assert all(e.routed_at is not None for e in events)  # history: nobody is told
        assert session.scalars(select(Delivery)).all() == []
        assert all(o.done_at is not None for o in session.scalars(select(OutboxEntry)).all())
        assert all(e.context["request_id"].startswith("import-") for e in events)

    again = _import(path, nb["id"], settings)
    assert "6 rows: 0 accepted, 2 already imported, 4 rejected" in again.stdout
    with session_scope(db_url) as session:
        assert len(session.scalars(select(Event)).all()) == 2


def test_import_json_lines_and_route_them_when_asked(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)
    app, api = build_app(settings)
    nb = api.notebook()
    api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org")
    close_app(app)
    lines = [
        {"type": "goal.updated", "data": GOAL, "idempotency_key": "ehr-1"},
        {
            "type": "therapy.logged",
            "data": {"discipline": "physical_therapy", "activity": "stairs", "minutes": 30},
        },
        {"type": "goal.updated", "data": {"goal": "g", "status": "new", "colour": "red"}},
    ]
    path = tmp_path / "history.jsonl"
    strict = (
        '{"type": "goal.updated", "type": "note.added", "data": {}}\n{"type": "goal.updated", "data": NaN}\n'
    )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n[1]\n" + strict)
    result = _import(path, nb["id"], settings, "--route")
    assert "7 rows: 2 accepted, 0 already imported, 5 rejected" in result.stdout, result.output
    assert "line 3: data.colour: Extra inputs are not permitted" in result.stdout
    assert "line 4: the line is not JSON" in result.stdout
    assert "line 5: the line must be a JSON object" in result.stdout
    assert "line 6: the line gives the key 'type' more than once" in result.stdout  # as the API reads JSON
    assert "line 7: the line is not JSON" in result.stdout
    with session_scope(db_url) as session:
        deliveries = session.scalars(select(Delivery)).all()
        keys = {e.idempotency_key for e in session.scalars(select(Event)).all()}
    assert sorted((d.channel, d.status) for d in deliveries) == [("email", "sent"), ("email", "sent")]
    assert "ehr-1" in keys and any(k.startswith("import:") for k in keys)
    # the same key with another body is refused, as the API refuses it
    path.write_text(json.dumps({"type": "goal.updated", "data": {"goal": "other", "status": "met"},
                                "idempotency_key": "ehr-1"}) + "\n")  # fmt: skip
    conflict = _import(path, nb["id"], settings)
    assert "line 1: idempotency_key: used before for a different event" in conflict.stdout


def test_import_refuses_a_file_or_notebook_it_cannot_use(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,when\nx,y\n")
    result = _import(bad, "nb_x", settings)
    assert result.exit_code == 2 and "no 'type' column" in result.stderr
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"type": "goal.updated", "data": GOAL}) + "\n")
    missing = _import(good, "nb_nothere", settings)
    assert missing.exit_code == 2 and "nb_nothere: no such notebook" in missing.stderr


# --- log lines --------------------------------------------------------------------------------------


def _record(message: str, *args) -> logging.LogRecord:
    return logging.LogRecord("careloop.workers", logging.INFO, __file__, 1, message, args, None)


def test_log_lines_carry_the_request_id_in_json_and_in_text():
    from careloop import logs

    with logs.request_id_bound("ehr-8812-a"):
        record = _record("delivery %s sent by %s", "dlv_1", "sms")
        logs.RequestIdFilter().filter(record)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["request_id"] == "ehr-8812-a" and line["message"] == "delivery dlv_1 sent by sms"
    assert {"ts", "level", "logger", "pid"} <= set(line) and line["level"] == "INFO"
    forged = _record("member %s", "Sam\nFAKE ERROR line")
    assert "\n" not in logs.JsonFormatter().format(forged)
    text_line = logs.TextFormatter(logs.LOG_FORMAT).format(record)
    assert text_line.endswith("delivery dlv_1 sent by sms [request_id=ehr-8812-a]")
    assert "\n" not in logs.TextFormatter(logs.LOG_FORMAT).format(forged)
    assert logs.current_request_id() is None  # bound only inside


def test_log_format_is_json_or_text_and_a_bad_one_stops_the_command(tmp_path):
    bad = invoke("rules", "check", "x.yaml", env=cli_env(CARELOOP_LOG_FORMAT="xml"))
    assert bad.exit_code == 2 and "CARELOOP_LOG_FORMAT must be json or text" in bad.stderr
