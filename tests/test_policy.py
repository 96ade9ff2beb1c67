"""The need-to-know policy file (config/policy.yaml): what each role may see of an event.

The shipped table is checked row by row; a bad file is reported by role, by the checker
command and at start-up of the web app and the worker, as a bad rules file is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from careloop.config.settings import DEFAULT_POLICY_FILE, Settings
from careloop.events import EVENT_DATA
from careloop.policy import PolicyError, load_policy, parse_policy
from careloop.vocabulary import Role
from tests.conftest import REDIS_URL, make_settings
from tests.test_cli import cli_env, invoke, run_process

POLICY = load_policy(DEFAULT_POLICY_FILE)
ROLE_NAMES = tuple(r.value for r in Role)

ALL = "all"
NONE = ()
CHECKIN = ("title", "start", "end", "location", "attendees")

EVENTS = {
    "medication": ("medication.changed", {"medication": "levetiracetam", "change": "started"}),
    "urgent swallowing concern": (
        "concern.raised", {"summary": "s", "severity": "urgent", "area": "swallowing"}
    ),
    "high mood concern": ("concern.raised", {"summary": "s", "severity": "high", "area": "mood"}),
    "low movement concern": ("concern.raised", {"summary": "s", "severity": "low", "area": "movement"}),
    "medium school concern": ("concern.raised", {"summary": "s", "severity": "medium", "area": "school"}),
    "low speech concern": ("concern.raised", {"summary": "s", "severity": "low", "area": "speech"}),
    "PT session": ("therapy.logged", {"discipline": "physical_therapy", "activity": "stairs"}),
    "speech session": ("therapy.logged", {"discipline": "speech_therapy", "activity": "straws"}),
    "goal": ("goal.updated", {"goal": "walk", "status": "progress"}),
    "family note": ("note.added", {"text": "t", "voice": "family"}),
    "child's note": ("note.added", {"text": "t", "voice": "child"}),
    "check-in": ("checkin.scheduled", {"checkin_id": "c", "title": "IEP", "attendees": ["mem_1"]}),
}

# The documented table (README, "Security and privacy"): role → events it sees in full.
SEES = {
    "parent": set(EVENTS),
    "guardian": set(EVENTS),
    "neurology": set(EVENTS),
    "developmental_pediatrics": set(EVENTS),
    "physical_therapy": {"urgent swallowing concern", "high mood concern", "low movement concern",
                         "PT session", "goal", "family note", "child's note", "check-in"},
    "occupational_therapy": {"urgent swallowing concern", "high mood concern", "low movement concern",
                             "medium school concern", "goal", "family note", "child's note", "check-in"},
    "speech_therapy": {"urgent swallowing concern", "high mood concern", "low speech concern",
                       "speech session", "goal", "family note", "child's note", "check-in"},
    "school": {"medium school concern", "goal", "family note", "child's note", "check-in"},
    "child": {"goal", "child's note", "check-in"},
    "other": {"check-in"},
}  # fmt: skip


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_the_shipped_policy_table(role):
    assert set(POLICY.roles) == set(ROLE_NAMES)
    for label, (event_type, data) in EVENTS.items():
        fields = POLICY.visible_fields(role, event_type, data)
        expected = tuple(EVENT_DATA[event_type].model_fields) if label in SEES[role] else NONE
        assert fields == expected, (role, label, fields)


def test_only_the_prescribers_and_the_family_see_medications():
    event_type, data = EVENTS["medication"]
    seeing = {role for role in ROLE_NAMES if POLICY.visible_fields(role, event_type, data)}
    assert seeing == {"parent", "guardian", "neurology", "developmental_pediatrics"}


def test_a_grant_may_show_only_some_fields_and_grants_add_up():
    policy = parse_policy(
        {
            "roles": {
                **{role: [] for role in ROLE_NAMES},
                "school": [
                    {"when": {"type": "medication.changed"}, "fields": ["change"]},
                    {"when": {"type": "medication.changed", "change": "stopped"}, "fields": ["note"]},
                ],
                "parent": "everything",
            }
        }
    )
    assert policy.visible_fields("school", "medication.changed", {"change": "started"}) == ("change",)
    assert policy.visible_fields("school", "medication.changed", {"change": "stopped"}) == ("change", "note")
    assert policy.visible_fields("other", "medication.changed", {"change": "stopped"}) == ()
    assert policy.visible_fields("parent", "goal.updated", {}) == ("goal", "status", "note")
    assert policy.visible_fields("no-such-role", "goal.updated", {}) == ()


BAD_POLICY = {
    "roles": {
        **{role: "everything" for role in ROLE_NAMES if role not in ("school", "other", "child")},
        "school": [
            {"when": {"type": "medication.changed", "change": "paused"}},
            {"when": {"type": "concern.raised"}, "fields": ["summary", "dose"]},
            {"when": {"type": "goal.updated"}, "show": "all"},
            "goal.updated",
            {"fields": ["goal"]},
        ],
        "child": "all of it",
        "nurse": "everything",
    },
    "defaults": {},
}

BAD_POLICY_ERRORS = [
    "unknown keys ['defaults'] (the file has only 'roles')",
    "role 'school': grant #1: when.change values ['paused'] are not among "
    "['started', 'stopped', 'dose_changed', 'schedule_changed']",
    "role 'school': grant #2: fields ['dose'] are not data fields of concern.raised",
    "role 'school': grant #3: unknown keys ['show'] (a grant has 'when' and 'fields')",
    "role 'school': grant #4: must be a mapping with 'when'",
    "role 'school': grant #5: when.type is required",
    "role 'child': must be 'everything' or a list of grants",
    "role 'nurse' is not a care-team role (roles: parent, guardian, child, neurology, "
    "developmental_pediatrics, physical_therapy, occupational_therapy, speech_therapy, school, other)",
    "roles ['other'] are missing: list every role ('everything', or grants; [] shows no details)",
]


def test_every_problem_is_reported_at_once_by_role():
    with pytest.raises(PolicyError) as caught:
        parse_policy(BAD_POLICY, "my-policy.yaml")
    assert caught.value.errors == BAD_POLICY_ERRORS
    assert str(caught.value).startswith("my-policy.yaml: unknown keys")


@pytest.mark.parametrize(
    "document, message",
    [
        (None, "the file must be a mapping with a 'roles' mapping"),
        ({"roles": ["parent"]}, "the file must be a mapping with a 'roles' mapping"),
        ({"roles": {**{r: [] for r in ROLE_NAMES}, "school": [{"when": {"type": "nap.taken"}}]}},
         "role 'school': grant #1: when.type has unknown event types ['nap.taken']"),
        ({"roles": {**{r: [] for r in ROLE_NAMES},
                    "school": [{"when": {"type": "goal.updated"}, "fields": []}]}},
         "role 'school': grant #1: fields must be a non-empty list of data field names"),
    ],
)  # fmt: skip
def test_shapes_that_are_not_a_policy(document, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    assert message in caught.value.errors


@pytest.fixture
def bad_policy(tmp_path) -> Path:
    path = tmp_path / "bad-policy.yaml"
    path.write_text(yaml.safe_dump(BAD_POLICY, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "content, message",
    [(b"roles: [unclosed", "not valid YAML"), (b"\xff\xfe\x00", "not UTF-8 text")],
)
def test_unreadable_files_are_policy_errors(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    with pytest.raises(PolicyError, match=message):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


# --- The checker command and start-up ---------------------------------------------------------


def test_cli_check_passes_the_shipped_file():
    result = invoke("policy", "check", str(DEFAULT_POLICY_FILE), env=cli_env())
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{DEFAULT_POLICY_FILE}: {len(ROLE_NAMES)} roles OK"


def test_cli_check_lists_every_problem_by_role_and_exits_1(bad_policy):
    proc = run_process("policy", "check", str(bad_policy), env=cli_env())
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"{bad_policy}: {error}" for error in BAD_POLICY_ERRORS]
    assert "Traceback" not in proc.stderr


def test_a_bad_policy_file_stops_app_start_up_before_touching_the_database(tmp_path, bad_policy):
    from careloop.service import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db", policy_file=bad_policy, redis_url=None)
    with pytest.raises(PolicyError) as started:
        create_app(settings=settings)
    assert started.value.errors == BAD_POLICY_ERRORS
    assert not (tmp_path / "x.db").exists()


def test_a_bad_policy_file_stops_the_worker_with_the_checkers_message(tmp_path, redis_conn, bad_policy):
    settings = make_settings(f"sqlite:///{tmp_path / 'w.db'}", tmp_path, redis_url=REDIS_URL)
    env = cli_env(settings, CARELOOP_POLICY=str(bad_policy))
    proc = run_process("worker", "--burst", env=env, timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "role 'nurse' is not a care-team role" in proc.stderr and "grant #2" in proc.stderr
    assert "Traceback" not in proc.stderr
