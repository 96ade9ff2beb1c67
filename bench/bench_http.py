"""Intake over real HTTP: wrk (2 threads, 16 connections) posting a 150-byte ``note.added``
with a notebook key to the Procfile's ``web`` on PostgreSQL and Redis, against a bare Flask
app (bench/bare_app.py: parse, insert one row, LPUSH) under the same gunicorn command line,
in the same run. Also:

- latency at a fixed 300 requests/s (p50, p99; measured from when each request was due, so a
  stall counts for every request it delays), as wrk2 would (Debian has no wrk2);
- batch intake: wrk posting 500-event batches to ``…/events:batch`` (4 connections), events/s;
- the peak RSS of the web processes (the largest of gunicorn's processes).

    .venv/bin/python -m bench.bench_http [SECONDS]

Needs wrk (Debian package ``wrk``; bench/run.sh installs it). PostgreSQL database of its own
(dropped afterwards) and Redis DB 14 (flushed), all on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from redis import Redis
from sqlalchemy import create_engine, text

from bench.sinks import free_port
from careloop.db import dispose_all, upgrade

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB = "careloop_bench_http"
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
REDIS_URL = "redis://127.0.0.1:6379/14"
ADMIN = "bench-admin-key-0123456789abcdef0123456789"
BODY = {"type": "note.added", "data": {"text": "Walked to the door on her own today!", "voice": "family"}}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def procfile_web() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("no web line in the Procfile")


def serve(command: str, env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + command], env={**env, "PORT": str(port)}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except urllib.error.HTTPError:
            return proc  # it answers (the bare app has no /healthz)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{command!r} did not start")


def call(port: int, path: str, body: dict, key: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wrk(url: str, key: str, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=json.dumps(BODY), key=key))
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50"),
        "p99": ms("99"),
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def wrk_batch(url: str, key: str, seconds: int, size: int = 500) -> dict[str, float]:
    """wrk posting batches of ``size`` events from 4 connections; events/s accepted."""
    events = [{**BODY, "data": {**BODY["data"], "text": f"note {i}"}} for i in range(size)]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=json.dumps({"events": events}), key=key))
    out = subprocess.run(
        ["wrk", "-t2", "-c4", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"events": rps * size, "rps": rps, "errors": int(non2xx.group(1)) if non2xx else 0}


def fixed_rate(port: int, path: str, key: str, rate: float, seconds: float, connections: int = 16) -> dict:
    """POST ``BODY`` at ``rate`` requests/s from ``connections`` keep-alive connections, each on
    its own schedule; each latency counts from when its request was due (no coordinated
    omission: a slow answer delays, and so counts against, the requests behind it)."""
    latencies: list[float] = []
    errors = [0]
    interval = connections / rate
    start = time.perf_counter() + 0.5
    payload = json.dumps(BODY)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client(offset: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n, mine = 0, []
        while (due := start + offset + n * interval) < start + seconds:
            time.sleep(max(0.0, due - time.perf_counter()))
            conn.request("POST", path, payload, headers)
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - due) * 1000)
            if response.status != 202:
                errors[0] += 1
            n += 1
        conn.close()
        latencies.extend(mine)

    threads = [
        threading.Thread(target=client, args=(i * interval / connections,)) for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "rate": rate,
        "count": len(latencies),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "max": latencies[-1],
        "errors": errors[0],
    }


def rss_mb(proc: subprocess.Popen) -> float:
    pids = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peak


def main(seconds: int) -> None:
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: apt-get install wrk (or run bench/run.sh)")
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {DB}"))
    upgrade(PG_URL)
    with create_engine(PG_URL).begin() as conn:
        conn.execute(text("CREATE TABLE bare_events (id text PRIMARY KEY, notebook_id text, body jsonb)"))
    Redis.from_url(REDIS_URL).flushdb()
    keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        DATABASE_URL=PG_URL, REDIS_URL=REDIS_URL, CARELOOP_ADMIN_KEY=ADMIN, CARELOOP_QUEUE_PREFIX="bench"
    )
    env.update(BARE_DSN=PG_URL.replace("+psycopg", ""), BARE_REDIS_URL=REDIS_URL, PYTHONPATH=str(REPO))
    web = procfile_web()
    results = {}
    try:
        port = free_port()
        proc = serve(web, env, port)
        try:
            nb = call(port, "/v1/notebooks", {"name": "b", "child_name": "Maya", "timezone": "UTC"}, ADMIN)
            key = call(port, f"/v1/notebooks/{nb['id']}/keys", {"name": "bench"}, ADMIN)["key"]
            wrk(f"http://127.0.0.1:{port}/v1/notebooks/{nb['id']}/events", key, 2)  # warm up
            results["careloop"] = wrk(f"http://127.0.0.1:{port}/v1/notebooks/{nb['id']}/events", key, seconds)
            results["fixed"] = fixed_rate(port, f"/v1/notebooks/{nb['id']}/events", key, 300, seconds)
            batch_url = f"http://127.0.0.1:{port}/v1/notebooks/{nb['id']}/events:batch"
            wrk_batch(batch_url, key, 2)  # warm up
            results["batch"] = wrk_batch(batch_url, key, seconds)
            results["careloop"]["rss"] = rss_mb(proc)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        port = free_port()
        bare = web.replace(
            shlex.quote("careloop.service:create_app()"), shlex.quote("bench.bare_app:create_app()")
        )
        bare = bare.replace("'careloop.service:create_app()'", "'bench.bare_app:create_app()'")
        proc = serve(bare, env, port)
        try:
            wrk(f"http://127.0.0.1:{port}/v1/notebooks/nb_1/events", "x", 2)
            results["bare"] = wrk(f"http://127.0.0.1:{port}/v1/notebooks/nb_1/events", "x", seconds)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        ours, base, fixed, batch = results["careloop"], results["bare"], results["fixed"], results["batch"]
        print(
            f"intake over HTTP (wrk -t2 -c16, {seconds}s, PostgreSQL): careloop {ours['rps']:,.0f} req/s "
            f"(p50 {ours['p50']:.1f} ms, p99 {ours['p99']:.1f} ms, {ours['errors']} errors) · bare Flask "
            f"{base['rps']:,.0f} req/s (p50 {base['p50']:.1f} ms, p99 {base['p99']:.1f} ms) · "
            f"ratio {ours['rps'] / base['rps']:.2f}× the baseline's req/s (target ≥ 0.8×)"
        )
        print(
            f"intake at a fixed {fixed['rate']:.0f} req/s (16 connections, {fixed['count']:,} requests, "
            f"{fixed['errors']} errors): p50 {fixed['p50']:.1f} ms, p99 {fixed['p99']:.1f} ms, "
            f"max {fixed['max']:.1f} ms (target p99 < 100 ms)"
        )
        print(
            f"batch intake (wrk -t2 -c4, 500 events a request, {batch['errors']} errors): "
            f"{batch['events']:,.0f} events/s accepted ({batch['rps']:.1f} req/s) · "
            f"{batch['events'] / ours['rps']:.1f}× careloop's single-event req/s, "
            f"{batch['events'] / base['rps']:.1f}× the bare baseline's (target ≥ 10,000 events/s)"
        )
        print(f"memory: web (gunicorn, largest process) peak RSS {ours['rss']:.0f} MB (target < 150 MB)")
    finally:
        Redis.from_url(REDIS_URL).flushdb()
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
