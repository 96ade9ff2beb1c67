"""Upgrading with work in Redis: jobs queued by a release that named them ``workers.jobs.*``
(before the single ``careloop`` namespace) are still run by today's ``careloop worker``."""

from __future__ import annotations

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from careloop.workers.jobs import route_event
from tests.conftest import build_app, build_team, peer_settings
from tests.test_faults import all_deliveries, assert_exactly_once, start_worker, stop_worker, worker_env


def test_jobs_queued_under_the_old_names_still_run(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    dispatcher = runtime.dispatcher
    nb, m = build_team(api)
    first = api.event(nb["id"], "therapy.logged", {"discipline": "speech_therapy", "activity": "straws"})
    second = api.event(nb["id"], "goal.updated", {"goal": "Walks 10 m", "status": "progress"})
    redis_conn.flushdb()  # what the old release had queued is replaced below, under its names
    # the second event is routed already; its deliveries wait for their (old-named) send jobs
    dispatcher.deliver, real_deliver = (lambda ids, delay=None: None), dispatcher.deliver
    route_event(second["id"], runtime=runtime)
    dispatcher.deliver = real_deliver
    waiting = [d.id for d in all_deliveries(pg_only_url) if d.status == "queued"]
    assert len(waiting) == 3  # goal update → two parents and the school, by email

    old = [dispatcher.route_queue.enqueue("workers.jobs.route_event", first["id"], job_id="legacy-route")]
    old += [
        dispatcher.queue("deliver").enqueue("workers.jobs.deliver", delivery_id, job_id=f"legacy-{i}")
        for i, delivery_id in enumerate(waiting)
    ]
    assert {job.func_name for job in old} == {"workers.jobs.route_event", "workers.jobs.deliver"}

    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(settings), log, "--burst")
    try:
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop_worker(worker)
    for job in old:
        fetched = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
        assert fetched.get_status() == JobStatus.FINISHED, (job.id, log.read_text()[-3000:])
    rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
    # therapy log → two parents by email; goal update → two parents and the school by email
    assert sorted(d.status for d in rows) == ["sent"] * 5
    assert len(smtp.messages) == 5
