"""schemathesis 4 against careloop's own ``/openapi.json``, served by the Procfile's web process
(gunicorn on PostgreSQL): ``--checks all`` over the coverage, fuzzing and stateful phases, once
with the admin key and once with a notebook key, at the same time. A bounded run (a fixed seed,
ten cases per operation besides the coverage phase's own); the README has the longer one.

Both runs read ``tests/schemathesis.toml`` (formats careloop documents by name, and the one
operation whose schema-valid requests may be answered 422); the notebook key's run is also told
its notebook's id, which it has no way to create, and reaches the rest through the API's links.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from tests.conftest import make_settings, wait_until
from tests.test_faults import REPO
from tests.test_migrations import fresh_pg_database
from tests.test_serving import Web

pytestmark = pytest.mark.fault

CONFIG = REPO / "tests" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
RUN = ["--checks", "all", "--phases", "coverage,fuzzing,stateful", "--max-examples", "10", "--seed", "9",
       "--no-color", "--request-timeout", "20"]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schemathesis")
    with fresh_pg_database("st") as url:
        # A throw-away database: commits need not wait for the disk (a thousand of them here).
        with create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool).connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{make_url(url).database}" SET synchronous_commit TO off'))
        # Twilio's token only: the status callback is live (and answers 403 to what schemathesis
        # cannot sign) while texts still go to the outbox.
        server = Web(make_settings(url, folder), folder, TWILIO_AUTH_TOKEN="f" * 32, WEB_THREADS="4")
        try:
            server.wait_ready()
            yield server, folder
        finally:
            server.stop()


def _seed(server: Web) -> tuple[str, str]:
    """A notebook with a member and a routed event; its id and a key that reaches it only."""
    _, _, notebook = server.call("POST", "/v1/notebooks", {"name": "n", "child_name": "M", "timezone": "UTC"})
    nb = notebook["id"]
    _, _, key = server.call("POST", f"/v1/notebooks/{nb}/keys", {"name": "schemathesis"})
    member = {"name": "Dana", "role": "parent", "email": "dana@example.org", "phone": "+15555550101"}
    server.call("POST", f"/v1/notebooks/{nb}/members", member)
    goal = {"type": "goal.updated", "data": {"goal": "g", "status": "new"}}
    _, _, event = server.call("POST", f"/v1/notebooks/{nb}/events", goal)
    wait_until(lambda: server.call("GET", f"/v1/events/{event['id']}")[2]["deliveries"], message="routing")
    return nb, key["key"]


def _start(server: Web, key: str, config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{server.base}/openapi.json",
         "--header", f"Authorization: Bearer {key}", *RUN],  # fmt: skip
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_schemathesis_finds_nothing_with_the_admin_key_or_a_notebook_key(served):
    from tests.conftest import ADMIN_KEY

    server, folder = served
    notebook_id, notebook_key = _seed(server)
    notebook_config = folder / "notebook-key.toml"
    notebook_config.write_text(CONFIG.read_text() + f'\n[parameters]\n"path.notebook_id" = "{notebook_id}"\n')
    runs = {
        "admin key": (ADMIN_KEY, CONFIG),
        "notebook key": (notebook_key, notebook_config),
    }
    started = {name: (_start(server, key, config, folder / f"{name}.log"), folder / f"{name}.log")
               for name, (key, config) in runs.items()}  # fmt: skip
    for name, (proc, log) in started.items():
        assert proc.wait(timeout=300) == 0, f"schemathesis with the {name}:\n{log.read_text()[-6000:]}"
        output = log.read_text()
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert re.search(rf"✅\s+{phase}", output), (name, phase, output[-3000:])
        links = int(re.search(r"API Links:\s+(\d+) covered", output).group(1))
        assert links >= 5, (name, "the stateful phase followed too few links", output[-3000:])
    assert "Traceback" not in server.text()
