"""The Procfile's processes, started from the environment alone as a Procfile runner would,
and their graceful shutdown on SIGTERM (the request or job in hand is finished)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from careloop.db import get_engine
from tests.conftest import ADMIN_KEY, build_app, build_team, checkin_data, peer_settings, wait_until
from tests.test_faults import REPO, all_deliveries, start_worker, stop_worker, worker_env

pytestmark = pytest.mark.fault


def procfile() -> dict[str, str]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_web(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": "1", "CARELOOP_ADMIN_KEY": ADMIN_KEY}
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + procfile()["web"]],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:  # refused, reset, timed out, an HTTP error: not up yet
            return False

    try:
        wait_until(up, timeout=30, interval=0.2, message="gunicorn to answer /healthz")
    except BaseException:
        stop_worker(proc)  # its whole process group: no gunicorn outlives a failed start
        raise
    return proc, base


def _waiting_on_a_lock(url: str) -> bool:
    """Whether another connection to this database is blocked on a lock (the request in hand)."""
    with get_engine(url).connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar()
        )


def call(base: str, method: str, path: str, body: dict | None = None, timeout: float = 30):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def test_procfile_names_the_web_and_worker_processes():
    entries = procfile()
    assert set(entries) == {"web", "worker", "mailer"}
    assert "$PORT" in entries["web"] or "${PORT" in entries["web"]
    assert shlex.split(entries["worker"])[:2] == ["careloop", "worker"]
    # texts and mail in processes of their own (a hung SMTP server never delays a text);
    # together they send every channel
    channels = []
    for name in ("worker", "mailer"):
        words = shlex.split(entries[name])
        assert words[:2] == ["careloop", "worker"]
        channels += words[words.index("--channels") + 1].split(",")
    assert sorted(channels) == ["calendar", "email", "sms"]


def test_web_and_worker_from_the_environment_alone_then_graceful_sigterm(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    """gunicorn (Procfile web) and `careloop worker` (Procfile worker), configured only by
    environment variables, carry an event to the SMTP server; on SIGTERM gunicorn finishes the
    request in hand before it exits."""
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    env = worker_env(settings)
    log = tmp_path / "processes.log"
    web, base = start_web(env, log)
    worker = start_worker(env, log)
    try:
        _, nb = call(
            base, "POST", "/v1/notebooks", {"name": "n", "child_name": "Maya", "timezone": "Europe/Paris"}
        )
        _, dad = call(
            base,
            "POST",
            f"/v1/notebooks/{nb['id']}/members",
            {"name": "Sam", "role": "parent", "email": "sam@example.org"},
        )
        status, accepted = call(
            base,
            "POST",
            f"/v1/notebooks/{nb['id']}/events",
            {"type": "checkin.scheduled", "data": checkin_data([dad["id"]])},
        )
        assert status == 202
        smtp.wait_for(1, timeout=30)
        wait_until(lambda: [d.status for d in all_deliveries(pg_only_url)] == ["sent"], timeout=30)

        # The worker signed the invite's member link; gunicorn opens it (one key, shared through
        # the database) and its access log shows the request without the token.
        invite_text = smtp.messages[0].get_body(("plain",)).get_content()
        (token,) = set(re.findall(r"https://careloop\.test/m/(\S+)", invite_text))
        with urllib.request.urlopen(f"{base}/m/{token}", timeout=10) as response:
            assert response.status == 200 and "For Sam (parent)" in response.read().decode()
        wait_until(lambda: "GET /m/[token]" in log.read_text(), timeout=10, message="the access log line")
        assert token not in log.read_text() and token.split(".")[1] not in log.read_text()

        # Hold the check-in's row lock so the next update request is in flight when SIGTERM comes.
        engine = get_engine(pg_only_url)
        blocker = engine.connect()
        transaction = blocker.begin()
        blocker.execute(text("SELECT id FROM checkins FOR UPDATE"))
        result = {}

        def update():
            try:
                result["answer"] = call(
                    base,
                    "POST",
                    f"/v1/notebooks/{nb['id']}/events",
                    {"type": "checkin.updated", "data": checkin_data([dad["id"]], title="Moved")},
                    timeout=60,
                )
            except Exception as exc:  # recorded for the assertion below
                result["error"] = exc

        thread = threading.Thread(target=update)
        thread.start()
        wait_until(
            lambda: _waiting_on_a_lock(pg_only_url), timeout=30, message="the request to wait on the row lock"
        )
        os.kill(web.pid, signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in log.read_text(), timeout=30, message="the SIGTERM")
        assert web.poll() is None, "gunicorn quit with a request in hand"
        transaction.commit()
        blocker.close()
        thread.join(timeout=30)
        assert result.get("answer", (None,))[0] == 202, result
        assert web.wait(timeout=30) == 0
        # ...and the worker still delivers that update.
        smtp.wait_for(2, timeout=30)
    finally:
        stop_worker(worker)
        if web.poll() is None:
            stop_worker(web)


def test_worker_sigterm_finishes_the_send_in_hand(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    env = worker_env(settings)
    log = tmp_path / "worker.log"
    smtp.delay = 1.2  # the server is slow to say 250 (within the 2 s provider timeout)
    worker = None
    try:
        nb, m = build_team(api)
        api.event(
            nb["id"],
            "therapy.logged",
            {"discipline": "physical_therapy", "activity": "walking"},
            author_member_id=m["mom"]["id"],
        )  # → one email, to dad
        worker = start_worker(env, log)
        smtp.wait_for(1, timeout=30)  # the message is at the server; its 250 has not come yet
        os.kill(worker.pid, signal.SIGTERM)  # warm shutdown
        assert worker.wait(timeout=60) == 0
        rows = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
        assert [(d.status, d.attempts) for d in rows] == [("sent", 1)]
        assert len(smtp.messages) == 1
    finally:
        if worker is not None:
            stop_worker(worker)
