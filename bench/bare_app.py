"""The intake benchmark's baseline: a bare Flask app that only parses the JSON body, inserts
one row and pushes its id onto a Redis list — what any intake must do at the least.

Served by the same gunicorn command line as careloop's Procfile ``web`` (bench_http.py).
"""

from __future__ import annotations

import json
import os
import secrets

import psycopg
from flask import Flask, request
from redis import Redis

DSN = os.environ["BARE_DSN"]
REDIS_URL = os.environ["BARE_REDIS_URL"]


def create_app() -> Flask:
    app = Flask("bare")
    redis = Redis.from_url(REDIS_URL)
    local = {}

    def connection() -> psycopg.Connection:
        conn = local.get(os.getpid())
        if conn is None or conn.closed:
            conn = local[os.getpid()] = psycopg.connect(DSN, autocommit=False)
        return conn

    @app.post("/v1/notebooks/<notebook_id>/events")
    def record(notebook_id: str):
        body = request.get_json()
        event_id = "evt_" + secrets.token_hex(10)
        conn = connection()
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO bare_events (id, notebook_id, body) VALUES (%s, %s, %s)",
                (event_id, notebook_id, json.dumps(body)),
            )
        conn.commit()
        redis.lpush("bare-route", event_id)
        return {"id": event_id, "status": "accepted"}, 202

    return app
