"""Mozilla's ical.js as an independent reader of careloop's invites.

ical.js parses calendar data for Thunderbird; careloop's test command installs it, pinned
(``ICALJS_VERSION`` in scripts/test.sh), into ``.peers/icaljs``. :func:`read` hands it many
iCalendar objects at once (one node process) and returns what it made of each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / ".peers" / "icaljs" / "node_modules" / "ical.js" / "dist" / "ical.js"
"""ical.js's ES module, as scripts/test.sh installs it."""

READER = Path(__file__).with_name("icaljs_read.mjs")

TIMEOUT = 300.0
"""Seconds one batch may take (a few thousand objects take a few seconds)."""


def read(texts: list[bytes], limit: int = 1000) -> list[dict]:
    """What ical.js reads in each iCalendar object: its METHOD, its VEVENTs (times as Unix
    seconds) and, for a recurring event, its occurrences as (recurrence id, start, end)."""
    node = shutil.which("node")
    if node is None or not LIBRARY.is_file():
        raise RuntimeError(f"ical.js is not installed at {LIBRARY}: run scripts/test.sh, which installs it")
    done = subprocess.run(
        [node, str(READER), str(LIBRARY), str(limit)],
        input=json.dumps([t.decode("utf-8") for t in texts]).encode(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ical.js failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(done.stdout)
