"""The `careloop` command as an operator uses it: settings from the environment, real Redis,
a real SMTP server (aiosmtpd), SQLite and PostgreSQL.

In-process calls go through click's CliRunner with the environment set for the call; the
settings cache and the process-wide runtime are reset around each call (and the test's own
runtime put back). A few calls run the command as a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import func, select

from careloop.cli import main
from careloop.config.settings import DEFAULT_RULES_FILE
from careloop.db import session_scope
from careloop.models import Delivery, OutboxEntry
from tests.conftest import (
    ADMIN_KEY,
    REDIS_URL,
    Api,
    close_app,
    make_settings,
    run_rq_until_settled,
    settings_env,
)
from tests.test_migrations import current_revision, fresh_pg_database, head_revision, schema_diff, tables

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIXES = ("CARELOOP_", "TWILIO_", "SMTP_", "REDIS_", "DATABASE_", "MAIL_")


def cli_env(settings=None, **extra) -> dict:
    """The environment an operator would set for ``settings``; every other careloop variable unset."""
    env: dict = {k: None for k in os.environ if k.startswith(ENV_PREFIXES)}
    if settings is not None:
        env.update(settings_env(settings))
    env.update(extra)
    return env


def _email_team(app):
    """A notebook whose three members have email only (no SMS): two parents and neurology."""
    api = Api(app.test_client(), {"Authorization": f"Bearer {ADMIN_KEY}"})
    nb = api.notebook()
    team = {
        "mom": api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org"),
        "dad": api.member(nb["id"], "Sam Rivera", "parent", email="sam@example.org"),
        "neuro": api.member(nb["id"], "Dr. Shah", "neurology", email="shah@example.org"),
    }
    return api, nb, team


def invoke(*args: str, env: dict):
    """`careloop ARGS` in this process, reading its settings from ``env`` like a fresh process."""
    from careloop.config.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args), env=env)
    finally:
        get_settings.cache_clear()


def run_process(*args: str, env: dict, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    """`careloop ARGS` as a real process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    full.update({k: v for k, v in env.items() if v is not None})
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "careloop.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_RULES = {
    "rules": [
        {
            "name": "to-the-moon",
            "when": {"type": "medication.changed"},
            "notify": ["astronaut"],
            "channels": ["sms"],
        },
        {
            "name": "by-pigeon",
            "when": {"type": "concern.raised"},
            "notify": ["team"],
            "channels": ["pigeon"],
        },
    ]
}


@pytest.fixture
def bad_rules(tmp_path) -> Path:
    path = tmp_path / "bad-rules.yaml"
    path.write_text(yaml.safe_dump(BAD_RULES))
    return path


# --- rules check (as a real process: exit codes as a shell sees them) ----------------------------


def test_rules_check_as_a_process_exit_codes(bad_rules):
    ok = run_process("rules", "check", str(DEFAULT_RULES_FILE), env=cli_env())
    assert ok.returncode == 0, ok.stderr
    assert f"{DEFAULT_RULES_FILE}: 9 rules OK" in ok.stdout

    bad = run_process("rules", "check", str(bad_rules), env=cli_env())
    assert bad.returncode == 1
    assert "to-the-moon" in bad.stderr and "astronaut" in bad.stderr
    assert "by-pigeon" in bad.stderr and "pigeon" in bad.stderr
    assert "Traceback" not in bad.stderr and "OK" not in bad.stdout


def test_rules_check_of_a_missing_file_fails_cleanly(tmp_path):
    result = invoke("rules", "check", str(tmp_path / "nope.yaml"), env=cli_env())
    assert result.exit_code == 1
    assert "nope.yaml" in result.stderr and "Traceback" not in result.output


# --- db upgrade ----------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_on_a_fresh_sqlite_file_and_is_idempotent(tmp_path):
    path = tmp_path / "ops.db"
    env = cli_env(DATABASE_URL=f"sqlite:///{path}")
    first = run_process("db", "upgrade", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "database at head" in first.stdout
    url = f"sqlite:///{path}"
    assert "deliveries" in tables(url) and schema_diff(url) == []
    again = invoke("db", "upgrade", env=env)
    assert again.exit_code == 0, again.output
    assert schema_diff(url) == [] and current_revision(url) == head_revision()


def test_db_upgrade_on_postgresql_from_the_environment(tmp_path):
    with fresh_pg_database("cli") as url:
        # Heroku-style postgres:// is accepted too
        env = cli_env(DATABASE_URL=url.replace("postgresql+psycopg://", "postgres://"))
        assert tables(url) == set()
        for _ in range(2):
            result = invoke("db", "upgrade", env=env)
            assert result.exit_code == 0, (result.output, result.exception)
            assert "database at head" in result.output
            assert schema_diff(url) == [] and current_revision(url) == head_revision()


# --- worker ---------------------------------------------------------------------------------------


def test_worker_without_redis_url_exits_with_a_clear_message(tmp_path):
    result = invoke("worker", "--burst", env=cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}"))
    assert result.exit_code != 0
    assert "careloop worker needs REDIS_URL" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_worker_help_shows_rqs_options_with_or_without_redis(tmp_path):
    for redis_url in (REDIS_URL, None):
        env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}", REDIS_URL=redis_url)
        result = invoke("worker", "--help", env=env)
        assert result.exit_code == 0, (redis_url, result.output)
        for option in ("--burst", "--name", "--max-jobs", "--with-scheduler"):
            assert option in result.output, (redis_url, option)
        assert "Usage: careloop worker [OPTIONS]" in result.output


def test_worker_passes_options_to_rq_which_refuses_unknown_ones(tmp_path, redis_conn):
    settings = make_settings(f"sqlite:///{tmp_path / 'w.db'}", tmp_path, redis_url=REDIS_URL)
    result = invoke("worker", "--no-such-option", env=cli_env(settings))
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output and "careloop worker --help" in result.output


def test_worker_burst_with_a_bad_rules_file_stops_with_the_rule_error(tmp_path, redis_conn, bad_rules):
    settings = make_settings(f"sqlite:///{tmp_path / 'w.db'}", tmp_path, redis_url=REDIS_URL)
    proc = run_process("worker", "--burst", env=cli_env(settings, CARELOOP_RULES=str(bad_rules)), timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "to-the-moon" in proc.stderr and "astronaut" in proc.stderr
    assert "by-pigeon" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- RQ mode: relay, dead letters -------------------------------------------------------------------


@pytest.fixture
def rq_mode(db_url, tmp_path, redis_conn, smtp):
    """RQ mode against Redis DB 13 and the aiosmtpd peer; SMS (unused here) to the file outbox."""
    from careloop.service import create_app
    settings = make_settings(
        db_url, tmp_path, redis_url=REDIS_URL, smtp_host=smtp.host, smtp_port=smtp.port, smtp_starttls=False
    )
    app = create_app({"TESTING": True}, settings=settings)
    api, nb, team = _email_team(app)
    yield settings, app, api, nb, team
    close_app(app)


def _therapy_log(api, nb, team) -> str:
    """therapy.logged by neurology → both parents by email: two deliveries."""
    return api.event(
        nb["id"],
        "therapy.logged",
        {"discipline": "physical_therapy", "activity": "stairs"},
        author_member_id=team["neuro"]["id"],
    )["id"]


def _rows(url) -> dict[str, Delivery]:
    with session_scope(url) as session:
        return {d.id: d for d in session.scalars(select(Delivery)).all()}


def _arrivals(smtp) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in smtp.messages:
        delivery_id = str(message["Message-ID"]).strip("<>").split(".")[0]
        counts[delivery_id] = counts.get(delivery_id, 0) + 1
    return counts


def test_deliveries_failed_and_retry_end_sent_exactly_once(rq_mode, smtp, db_url):
    settings, app, api, nb, team = rq_mode
    runtime = app.extensions["careloop"].runtime
    env = cli_env(settings)

    none_yet = invoke("deliveries", "failed", env=env)
    assert none_yet.exit_code == 0 and "no failed deliveries" in none_yet.output

    smtp.fail_always("550 5.1.1 Mailbox unavailable")
    event_id = _therapy_log(api, nb, team)
    run_rq_until_settled(runtime)
    rows = _rows(db_url)
    assert sorted(d.status for d in rows.values()) == ["failed", "failed"]
    assert all(d.attempts == 1 and "550" in (d.error or "") for d in rows.values())
    assert smtp.messages == []
    first, second = sorted(rows)

    # -- listed as dead letters, in text and as JSON lines
    text_out = invoke("deliveries", "failed", env=env)
    assert text_out.exit_code == 0, text_out.output
    lines = text_out.stdout.strip().splitlines()
    assert len(lines) == 2
    for delivery_id in (first, second):
        (line,) = [x for x in lines if x.startswith(delivery_id)]
        assert "email" in line and "failed" in line and "attempts=1" in line
        assert f"event={event_id}" in line and "550" in line
    as_json = invoke("deliveries", "failed", "--json", env=env)
    assert as_json.exit_code == 0, as_json.output
    items = [json.loads(x) for x in as_json.stdout.strip().splitlines()]
    assert sorted(i["id"] for i in items) == [first, second]
    for item in items:
        assert item["status"] == "failed" and item["channel"] == "email"
        assert item["event_id"] == event_id and "550" in item["error"] and item["attempts"] == 1
        assert item["member_id"] in (team["mom"]["id"], team["dad"]["id"])
    other = invoke("deliveries", "failed", "--notebook", "nb_other", env=env)
    assert other.exit_code == 0 and "no failed deliveries" in other.output

    # -- the server is fixed; one delivery retried by id
    smtp.clear()
    retried = invoke("deliveries", "retry", first, env=env)
    assert retried.exit_code == 0, retried.output
    assert f"{first}: queued again" in retried.output
    run_rq_until_settled(runtime)
    rows = _rows(db_url)
    assert (rows[first].status, rows[first].attempts) == ("sent", 2)
    assert rows[first].provider_id == f"<{first}.2@careloop.test>"
    assert rows[second].status == "failed"
    assert _arrivals(smtp) == {first: 1}

    # -- retrying a delivery that is not failed says so and changes nothing
    again = invoke("deliveries", "retry", first, env=env)
    assert again.exit_code == 0, again.output
    assert f"{first}: not failed; left as it is" in again.output
    run_rq_until_settled(runtime)
    assert (_rows(db_url)[first].status, _rows(db_url)[first].attempts) == ("sent", 2)
    assert _arrivals(smtp) == {first: 1}

    # -- an unknown id is warned about (exit 1); --all-failed picks up the rest
    unknown = invoke("deliveries", "retry", "dlv_nope", env=env)
    assert "dlv_nope: no such delivery" in unknown.stderr
    assert unknown.exit_code == 1
    everything = invoke("deliveries", "retry", "--all-failed", env=env)
    assert everything.exit_code == 0, everything.output
    assert f"{second}: queued again" in everything.output and first not in everything.output
    run_rq_until_settled(runtime)
    rows = _rows(db_url)
    assert {d.status for d in rows.values()} == {"sent"}
    assert _arrivals(smtp) == {first: 1, second: 1}
    assert len(smtp.messages) == 2
    assert "no failed deliveries" in invoke("deliveries", "failed", env=env).output
    # a second --all-failed finds nothing and sends nothing
    invoke("deliveries", "retry", "--all-failed", env=env)
    run_rq_until_settled(runtime)
    assert _arrivals(smtp) == {first: 1, second: 1}


def test_deliveries_retry_needs_ids_or_all_failed(tmp_path):
    result = invoke("deliveries", "retry", env=cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}"))
    assert result.exit_code == 2
    assert "name delivery ids or pass --all-failed" in result.stderr


def test_relay_once_hands_a_pending_event_to_redis(rq_mode, redis_conn, db_url):
    settings, app, api, nb, team = rq_mode
    runtime = app.extensions["careloop"].runtime

    class QueueDown:
        def route(self, event_ids):
            raise ConnectionError("Redis down")

    runtime.__dict__["dispatcher"] = QueueDown()
    event_id = _therapy_log(api, nb, team)
    del runtime.__dict__["dispatcher"]
    route_queue = Queue(f"{settings.queue_prefix}-route", connection=redis_conn, serializer=JSONSerializer)
    assert route_queue.job_ids == []

    proc = run_process("relay", "--once", env=cli_env(settings))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"events": 1, "deliveries": 0, "stale": 0}
    assert route_queue.job_ids == [f"route-{event_id}"]
    with session_scope(db_url) as session:
        entry = session.scalars(select(OutboxEntry)).one()
        assert entry.ref_id == event_id and entry.dispatched_at is not None and entry.done_at is None

    # handed over moments ago: a second sweep does not hand it over again
    second = invoke("relay", "--once", env=cli_env(settings))
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"events": 0, "deliveries": 0, "stale": 0}
    assert route_queue.job_ids == [f"route-{event_id}"]

    run_rq_until_settled(runtime)
    assert {d.status for d in _rows(db_url).values()} == {"sent"}


# --- embedded mode: a channel failing, retried from the command line ---------------------------------


def test_embedded_failed_delivery_listed_and_retried_from_the_cli(tmp_path, db_url):
    from careloop.service import create_app
    settings = make_settings(db_url, tmp_path)
    app = create_app({"TESTING": True}, settings=settings)
    try:
        api, nb, team = _email_team(app)
        # the outbox's email folder cannot be created: a file is in its way
        settings.outbox_dir.mkdir(parents=True)
        (settings.outbox_dir / "email").write_text("in the way")
        _therapy_log(api, nb, team)
        assert app.extensions["careloop"].runtime.dispatcher.drain(timeout=30)
    finally:
        close_app(app)
    rows = _rows(db_url)
    assert sorted(d.status for d in rows.values()) == ["failed", "failed"]

    env = cli_env(settings)
    listed = invoke("deliveries", "failed", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    assert sorted(json.loads(x)["id"] for x in listed.stdout.strip().splitlines()) == sorted(rows)

    (settings.outbox_dir / "email").unlink()
    retried = invoke("deliveries", "retry", "--all-failed", env=env)
    assert retried.exit_code == 0, retried.output
    assert retried.output.count("queued again") == 2
    rows = _rows(db_url)
    assert {d.status for d in rows.values()} == {"sent"}, [(d.status, d.error) for d in rows.values()]
    emls = sorted(p.name for p in (settings.outbox_dir / "email").glob("*.eml"))
    assert emls == sorted(f"{d.id}.{d.attempts}.eml" for d in rows.values())
    with session_scope(db_url) as session:
        assert (
            session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status != "sent")) == 0
        )
