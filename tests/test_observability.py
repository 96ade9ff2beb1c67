"""What an operator sees, on the real processes: gunicorn as the Procfile starts it (two workers,
``config/gunicorn.conf.py``) and a real ``careloop worker``, sharing one PROMETHEUS_MULTIPROC_DIR,
against PostgreSQL, Redis, aiosmtpd and Twilio's API through Prism.

A known sequence of events — including a refused RCPT, a 451, a manual retry and a forged
Twilio callback — must show in ``/metrics`` exactly (parsed with prometheus_client's parser),
and one request id must be followed through the JSON logs of the web process and the worker.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, peer_settings, wait_until
from tests.test_faults import all_deliveries, start_worker, stop_worker, worker_env
from tests.test_serving import Web

pytestmark = pytest.mark.fault

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


def request(base: str, method: str, path: str, body=None, headers=None, form: bytes | None = None):
    data = json.dumps(body).encode() if body is not None else form
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {ADMIN_KEY}",
            "Content-Type": "application/json" if form is None else "application/x-www-form-urlencoded",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape by (name, sorted labels), read by prometheus_client's parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_by_pid(folder: Path) -> Counter:
    """careloop_http_requests counted by each process's own file in the multiprocess folder."""
    counts: Counter = Counter()
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, amount, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[0] == "careloop_http_requests":
                counts[pid] += amount
    return counts


def web_worker_pids(master: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(entry.name))
    return pids


def json_lines(path: Path) -> list[dict]:
    """Every line of a process's log as JSON (a line that is not JSON fails the test)."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{path.name} line {number} is not JSON: {line[:300]}") from None
    return lines


def test_a_known_sequence_shows_exactly_in_metrics_and_one_request_id_runs_through_the_logs(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    folder = tmp_path / "metrics"
    folder.mkdir()
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "CARELOOP_METRICS_TOKEN": METRICS_TOKEN}
    web = Web(settings, tmp_path, workers=2, **shared)
    worker_log = tmp_path / "worker.log"
    worker = None
    try:
        web.wait_ready()
        base = web.base
        # a team: a parent with a phone, the school and neurology by email only
        _, _, body = request(
            base, "POST", "/v1/notebooks", {"name": "n", "child_name": "Maya", "timezone": "UTC"}
        )
        nb = json.loads(body)["id"]
        people = [
            {"name": "Dana Rivera", "role": "parent", "email": "dana@example.org", "phone": "+15555550101"},
            {"name": "Ms. Ortiz", "role": "school", "email": "ortiz@example.org"},
            {"name": "Dr. Shah", "role": "neurology", "email": "shah@example.org"},
        ]
        for person in people:
            assert request(base, "POST", f"/v1/notebooks/{nb}/members", person)[0] == 201

        # the next email's RCPT is refused for good, the one after it is answered 451 once
        smtp.script_rcpt("550 5.1.1 No such user")
        smtp.script("451 4.3.0 Try again later")
        worker_environment = {**worker_env(settings), **shared}
        worker = start_worker(worker_environment, worker_log)

        goal = {"type": "goal.updated", "data": {"goal": "Walks to the bus stop", "status": "progress"}}
        for _ in range(2):  # each: email to the parent and the school
            assert request(base, "POST", f"/v1/notebooks/{nb}/events", goal)[0] == 202
        traced = "trace-" + uuid.uuid4().hex
        concern = {
            "type": "concern.raised",
            "data": {"summary": "Falls on the stairs twice a day", "severity": "high"},
        }  # the whole team: SMS and email each (SMS skipped for the two without a phone)
        status, headers, body = request(
            base, "POST", f"/v1/notebooks/{nb}/events", concern, {"X-Request-ID": traced}
        )
        assert status == 202 and headers["X-Request-ID"] == traced
        concern_id = json.loads(body)["id"]
        # a forged Twilio status callback
        forged = b"MessageSid=SM" + b"0" * 32 + b"&MessageStatus=delivered"
        status, _, _ = request(base, "POST", "/v1/twilio/status?delivery=dlv_x&attempt=1", form=forged)
        assert status == 403

        def settled():
            rows = all_deliveries(pg_only_url)
            return len(rows) == 10 and all(d.status in ("sent", "skipped", "failed") for d in rows) and rows

        rows = wait_until(settled, timeout=90, interval=0.2, message="every delivery to settle")
        failed = [d for d in rows if d.status == "failed"]
        assert [d.channel for d in failed] == ["email"], [(d.channel, d.status, d.error) for d in rows]
        assert request(base, "POST", f"/v1/deliveries/{failed[0].id}/retry")[0] == 202
        wait_until(
            lambda: all(d.status in ("sent", "skipped") for d in all_deliveries(pg_only_url)),
            timeout=60,
            interval=0.2,
            message="the retried email to be sent",
        )

        # every web worker serves: keep asking until both gunicorn workers have answered someone
        workers = web_worker_pids(web.proc.pid)
        assert len(workers) == 2, workers

        def both_served():
            served = {pid for pid, count in requests_by_pid(folder).items() if pid in workers and count}
            if served != workers:
                request(base, "GET", "/healthz")
            return served == workers

        wait_until(both_served, timeout=60, interval=0.01, message="both web workers to answer a request")

        assert request(base, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, headers, body = request(
            base, "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        found = samples(body.decode())
        by_pid = requests_by_pid(folder)
    finally:
        if worker is not None:
            stop_worker(worker)
        web.stop()

    # events accepted, by type and source
    assert value(found, "careloop_events_accepted_total", type="goal.updated", source="api") == 2
    assert value(found, "careloop_events_accepted_total", type="concern.raised", source="api") == 1
    # deliveries by channel and status, counted by the worker: 7 emails sent (one after a manual
    # retry of the refused one), 1 text sent, 2 texts skipped (no phone)
    final = Counter((d.channel, d.status) for d in all_deliveries(pg_only_url))
    assert final == {("email", "sent"): 7, ("sms", "sent"): 1, ("sms", "skipped"): 2}
    assert value(found, "careloop_deliveries_total", channel="email", status="sent") == 7
    assert value(found, "careloop_deliveries_total", channel="email", status="failed") == 1
    assert value(found, "careloop_deliveries_total", channel="sms", status="sent") == 1
    assert value(found, "careloop_deliveries_total", channel="sms", status="skipped") == 2
    assert value(found, "careloop_dead_letters_total", channel="email") == 1
    assert value(found, "careloop_delivery_retries_total", channel="email", kind="automatic") == 1
    assert value(found, "careloop_delivery_retries_total", channel="email", kind="manual") == 1
    # provider latency: every send timed (7 accepted and 2 refused emails, 1 text)
    assert value(found, "careloop_provider_latency_seconds_count", channel="email", outcome="ok") == 7
    assert value(found, "careloop_provider_latency_seconds_count", channel="email", outcome="error") == 2
    assert value(found, "careloop_provider_latency_seconds_count", channel="sms", outcome="ok") == 1
    assert value(found, "careloop_provider_latency_seconds_sum", channel="sms", outcome="ok") > 0
    assert value(found, "careloop_webhook_verification_failures_total", webhook="twilio") == 1
    # the web workers' answers, summed over both: 3 events and the retry (202), the forgery (403)
    assert value(found, "careloop_http_requests_total", method="POST", status="202") == 4
    assert value(found, "careloop_http_requests_total", method="POST", status="403") == 1
    assert sum(count for pid, count in by_pid.items() if pid in workers) >= 2
    # queues read from Redis at the scrape: all drained
    assert value(found, "careloop_queue_up") == 1
    queues = {dict(labels)["queue"] for (name, labels) in found if name == "careloop_queue_depth"}
    assert "careloop-test-route" in queues and "careloop-test-email" in queues
    for queue in queues:
        assert value(found, "careloop_queue_depth", queue=queue) == 0
        assert value(found, "careloop_queue_failed_jobs", queue=queue) == 0

    # one grep of the request id: the web process recorded the event, the worker routed it and
    # sent each of its deliveries, all under that id
    web_lines = json_lines(web.log)
    worker_lines = json_lines(worker_log)
    web_traced = [line for line in web_lines if line["request_id"] == traced]
    worker_traced = [line for line in worker_lines if line["request_id"] == traced]
    assert any(f"event {concern_id} (concern.raised) recorded" in line["message"] for line in web_traced)
    assert any(line["logger"] == "gunicorn.access" and "202" in line["message"] for line in web_traced)
    assert any(f"routed event {concern_id}" in line["message"] for line in worker_traced), worker_lines[-20:]
    sent = {d.id for d in all_deliveries(pg_only_url) if d.event_id == concern_id and d.status == "sent"}
    assert len(sent) == 4
    for delivery_id in sent:
        assert any(f"delivery {delivery_id} sent" in line["message"] for line in worker_traced), delivery_id
    # and nobody else's lines carry it
    other = [line for line in web_lines + worker_lines if line["request_id"] not in (None, traced)]
    assert all(traced not in json.dumps(line) for line in other)
    # no health detail or contact in any line of either process
    everything = web.log.read_text() + worker_log.read_text()
    for secret in ("Falls on the stairs", "Walks to the bus stop", "dana@example.org", "+15555550101",
                   "5555550101", "ortiz@example.org", "Dana Rivera", METRICS_TOKEN, ADMIN_KEY):  # fmt: skip
        assert secret not in everything, secret
    assert os.listdir(folder)  # the processes wrote their values where they were told


def test_a_worker_on_a_machine_of_its_own_serves_its_metrics(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    """`careloop worker --metrics-listen`: a worker without a web process beside it is scraped
    itself (no PROMETHEUS_MULTIPROC_DIR here: its own counts)."""
    from tests.conftest import build_app, close_app
    from tests.test_procfile import free_port

    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    port = free_port()
    worker = start_worker(
        worker_env(settings), tmp_path / "worker.log", "--metrics-listen", f"127.0.0.1:{port}"
    )
    try:
        nb = api.notebook()
        api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org")
        api.member(nb["id"], "Ms. Ortiz", "school", email="ortiz@example.org")
        api.event(nb["id"], "goal.updated", {"goal": "g", "status": "new"})
        wait_until(
            lambda: [d.status for d in all_deliveries(pg_only_url)] == ["sent", "sent"],
            timeout=60,
            interval=0.1,
            message="both emails sent",
        )

        def scraped():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return samples(response.read().decode())
            except OSError:
                return None

        found = wait_until(scraped, timeout=30, interval=0.1, message="the worker's metrics")
    finally:
        stop_worker(worker)
        close_app(app)
    assert value(found, "careloop_deliveries_total", channel="email", status="sent") == 2
    assert value(found, "careloop_provider_latency_seconds_count", channel="email", outcome="ok") == 2
    # counted where it happened: intake is the web process's
    assert value(found, "careloop_events_accepted_total", type="goal.updated", source="api") == 0
