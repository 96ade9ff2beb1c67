"""The deployment files say what the Procfile says: compose.yaml and the Dockerfile run the
same commands, with settings careloop knows. (No container engine runs on the test machine:
these check the files, not an image.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from careloop.config.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            words = shlex.split(command)
            entries[name.strip()] = [w for w in words if not w.startswith("0.0.0.0:")]
    return entries


def test_compose_runs_the_procfile_processes_over_postgres_redis_and_an_smtp_catcher():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "mailpit", "web", "worker", "mailer"} <= set(services)
    for name, command in procfile().items():
        theirs = [w for w in services[name]["command"] if not w.startswith("0.0.0.0:")]
        assert theirs == command, name
    known = {
        field.validation_alias.choices[0]
        for field in Settings.model_fields.values()
        if field.validation_alias
    }
    for name in ("web", "worker", "mailer"):
        environment = services[name]["environment"]
        assert set(environment) <= known, set(environment) - known
        assert environment["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert services[name]["depends_on"]


def test_the_image_starts_the_procfile_web():
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert [w for w in cmd if not w.startswith("0.0.0.0:")] == procfile()["web"]
    for folder in ("careloop", "service", "workers", "integrations", "config", "migrations"):
        assert f"COPY {folder} {folder}" in dockerfile
