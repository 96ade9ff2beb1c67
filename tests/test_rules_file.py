"""The rules file: the parser and validator, `careloop rules check FILE`, and start-up.

Every kind of mistake is reported naming the rule, all of them at once; the checker and a
failed start-up give the same message.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from careloop.cli import main
from careloop.config.settings import DEFAULT_RULES_FILE, Settings
from careloop.rules import RulesError, load_rules, parse_rules

GOOD = {
    "name": "good",
    "when": {"type": "concern.raised", "severity": ["high", "urgent"]},
    "notify": ["team"],
    "channels": ["sms", "email"],
}
CHECKIN_RULE = {
    "name": "invites",
    "when": {"type": ["checkin.scheduled", "checkin.updated", "checkin.cancelled"]},
    "notify": ["attendees"],
    "channels": ["calendar"],
}


def _rule(name: str = "r", **changes) -> dict:
    """GOOD renamed, with keys replaced (value given) or removed (value ``...``)."""
    rule = {**copy.deepcopy(GOOD), "name": name}
    for key, value in changes.items():
        if value is ...:
            rule.pop(key)
        else:
            rule[key] = value
    return rule


def _errors(*rules) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_rules({"rules": list(rules)})
    return info.value.errors


# --- Valid files -----------------------------------------------------------------------------


def test_the_default_rules_file_is_valid():
    rules = load_rules(DEFAULT_RULES_FILE)
    assert len(rules.rules) == 9
    names = [r.name for r in rules.rules]
    assert len(set(names)) == len(names)


def test_a_valid_rule_parses_to_plain_data():
    rules = parse_rules(
        {
            "rules": [
                {
                    "name": "meds",
                    "description": "prescribers hear of changes",
                    "when": {"type": "medication.changed", "change": "started"},
                    "notify": ["neurology", "mem_abc123", "everyone"],
                    "channels": ["email", "sms", "email"],
                },
                CHECKIN_RULE,
            ]
        }
    )
    meds, invites = rules.rules
    assert meds.name == "meds"
    assert meds.types == ("medication.changed",)
    assert meds.match == (("change", ("started",)),)
    assert meds.notify == ("neurology", "mem_abc123", "everyone")
    assert meds.channels == ("email", "sms")  # repeated channels count once
    assert invites.types == ("checkin.scheduled", "checkin.updated", "checkin.cancelled")
    assert invites.notify == ("attendees",)
    assert invites.channels == ("calendar",)


@pytest.mark.parametrize(
    "when",
    [
        {"type": "therapy.logged", "discipline": ["speech_therapy", "occupational_therapy"]},
        {"type": "therapy.logged", "minutes": 30},
        {"type": "medication.changed", "medication": "Keppra"},
        {"type": "note.added", "voice": "child"},
        {"type": "goal.updated", "status": ["met", "revised"]},
        {"type": ["checkin.scheduled", "checkin.updated"], "location": "Clinic"},
        {"type": ["concern.raised"], "area": ["speech", "swallowing"], "severity": "low"},
    ],
)
def test_valid_when_clauses(when):
    (rule,) = parse_rules({"rules": [_rule(when=when)]}).rules
    assert set(rule.types) == set(when["type"] if isinstance(when["type"], list) else [when["type"]])
    assert {field for field, _ in rule.match} == set(when) - {"type"}


def test_an_empty_rules_list_is_allowed():
    assert parse_rules({"rules": []}).rules == ()


# --- Each kind of error, named by rule -------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        _rule(when={"type": "concern.opened"}),
        "when.type has unknown event types ['concern.opened']",
        id="unknown-event-type",
    ),
    pytest.param(
        _rule(when={"type": ["goal.updated", "goal.deleted"]}),
        "unknown event types ['goal.deleted']",
        id="one-unknown-event-type-in-a-list",
    ),
    pytest.param(
        _rule(when={"type": "concern.raised", "colour": "red"}),
        "when.colour is not a data field of ['concern.raised']",
        id="unknown-data-field",
    ),
    pytest.param(
        _rule(when={"type": ["concern.raised", "note.added"], "severity": "high"}),
        "when.severity is not a data field of ['note.added']",
        id="data-field-missing-from-one-type",
    ),
    pytest.param(
        _rule(when={"type": "concern.raised", "severity": "critical"}),
        "when.severity values ['critical'] are not among ['low', 'medium', 'high', 'urgent']",
        id="bad-enum-value",
    ),
    pytest.param(
        _rule(when={"type": "concern.raised", "area": ["speech", "hearing"]}),
        "when.area values ['hearing']",
        id="bad-enum-value-in-list",
    ),
    pytest.param(
        _rule(when={"type": "therapy.logged", "discipline": "music_therapy"}),
        "when.discipline values ['music_therapy']",
        id="bad-discipline",
    ),
    pytest.param(
        _rule(notify=["parent", "nurse"]), "notify has unknown role or target 'nurse'", id="unknown-role"
    ),
    pytest.param(_rule(notify=["Team"]), "notify has unknown role or target 'Team'", id="unknown-target"),
    pytest.param(
        _rule(notify=["parent", 7]), "notify entries must be strings, not 7", id="non-string-target"
    ),
    pytest.param(
        _rule(channels=["email", "fax"]), "channels has unknown channels ['fax']", id="unknown-channel"
    ),
    pytest.param(
        _rule(channels=["email", "calendar"]),
        "the calendar channel only applies to check-in events",
        id="calendar-on-concern",
    ),
    pytest.param(
        {
            **CHECKIN_RULE,
            "name": "r",
            "when": {"type": ["checkin.updated", "goal.updated"]},
            "notify": ["parent"],
        },
        "the calendar channel only applies to check-in events",
        id="calendar-on-mixed-types",
    ),
    pytest.param(
        _rule(notify=["attendees"]),
        "notify 'attendees' only applies to check-in events",
        id="attendees-on-concern",
    ),
    pytest.param(_rule(when=...), "when.type is required", id="missing-when"),
    pytest.param(_rule(when={"severity": "high"}), "when.type is required", id="when-without-type"),
    pytest.param(_rule(when="concern.raised"), "when.type is required", id="when-not-a-mapping"),
    pytest.param(_rule(notify=...), "notify must be a non-empty list", id="missing-notify"),
    pytest.param(_rule(notify=[]), "notify must be a non-empty list", id="empty-notify"),
    pytest.param(_rule(notify="parent"), "notify must be a non-empty list", id="notify-not-a-list"),
    pytest.param(_rule(channels=...), "channels must be a non-empty list", id="missing-channels"),
    pytest.param(_rule(channels=[]), "channels must be a non-empty list", id="empty-channels"),
    pytest.param(_rule(channels="email"), "channels must be a non-empty list", id="channels-not-a-list"),
    pytest.param(_rule(notfiy=["parent"]), "unknown keys ['notfiy']", id="unknown-key"),
    pytest.param(_rule(**{"7": 1, "extra": 2}), "unknown keys ['7', 'extra']", id="unknown-keys-sorted"),
    # Rules that parse but could never match, and values that crashed the parser.
    pytest.param(
        _rule(when={"type": []}), "when.type must name at least one event type", id="empty-type-list"
    ),
    pytest.param(
        _rule(when={"type": {"concern": "raised"}}),
        "when.type has unknown event types",
        id="type-is-a-mapping",
    ),
    pytest.param(
        _rule(when={"type": "concern.raised", "severity": []}),
        "when.severity must list at least one value",
        id="empty-value-list",
    ),
    pytest.param(
        _rule(
            when={"type": "checkin.scheduled", "attendees": "mem_1"}, notify=["parent"], channels=["calendar"]
        ),
        "when.attendees is a list and cannot be matched on",
        id="match-on-list-field",
    ),
    pytest.param(
        _rule(when={"type": "therapy.logged", "minutes": "lots"}),
        "when.minutes values ['lots'] are not valid for therapy.logged",
        id="wrong-value-type",
    ),
    pytest.param(
        _rule(when={"type": "medication.changed", "dose": 5}),
        "when.dose values [5] are not valid",
        id="number-for-text",
    ),
    pytest.param(_rule(description=["a", "list"]), "description must be text", id="description-not-text"),
]


@pytest.mark.parametrize(("rule", "message"), ERROR_CASES)
def test_each_error_names_the_rule(rule, message):
    errors = _errors(GOOD, rule)
    assert len(errors) == 1, errors
    assert errors[0].startswith("rule 'r': "), errors
    assert message in errors[0]


def test_non_string_unknown_keys_are_reported_not_a_crash():
    rule = _rule()
    rule[1] = "x"
    rule["zzz"] = "y"
    assert _errors(rule) == ["rule 'r': unknown keys [1, 'zzz']"]


@pytest.mark.parametrize(
    ("name", "label"),
    [(None, "rule #2"), ("", "rule #2"), (5, "rule #2"), ("   ", "rule '   '")],
)
def test_a_rule_without_a_usable_name_is_named_by_position(name, label):
    rule = _rule()
    rule["name"] = name
    assert _errors(GOOD, rule) == [f"{label}: name is required"]


def test_a_rule_missing_its_name_is_named_by_position():
    assert _errors(GOOD, _rule(name=...)) == ["rule #2: name is required"]


def test_duplicate_names_are_reported_once_per_repeat():
    errors = _errors(_rule("same"), _rule("other"), _rule("same"), _rule("same"))
    assert errors == ["rule 'same': name is used twice", "rule 'same': name is used twice"]


def test_a_rule_that_is_not_a_mapping():
    assert _errors(GOOD, "just text") == ["rule #2: must be a mapping"]


@pytest.mark.parametrize(
    "document", [None, [], {"rules": None}, {"rules": {"name": "x"}}, {"rule": []}, "rules"]
)
def test_the_file_must_hold_a_rules_list(document):
    with pytest.raises(RulesError) as info:
        parse_rules(document, source="f.yaml")
    assert info.value.errors == ["the file must be a mapping with a 'rules' list"]
    assert str(info.value) == "f.yaml: the file must be a mapping with a 'rules' list"


def test_all_errors_are_reported_at_once():
    errors = _errors(
        GOOD,
        _rule("bad-type", when={"type": "nope"}),
        _rule(
            "bad-everything",
            when={"type": "note.added", "voice": "parrot"},
            notify=["nurse"],
            channels=["fax"],
            colour="red",
        ),
        _rule("bad-type"),
        42,
    )
    assert errors == [
        "rule 'bad-type': when.type has unknown event types ['nope']",
        "rule 'bad-everything': unknown keys ['colour']",
        "rule 'bad-everything': when.voice values ['parrot'] are not among ['child', 'family', 'team']",
        "rule 'bad-everything': notify has unknown role or target 'nurse'",
        "rule 'bad-everything': channels has unknown channels ['fax'] (use ['sms', 'email', 'calendar'])",
        "rule 'bad-type': name is used twice",
        "rule #5: must be a mapping",
    ]


def test_the_message_joins_every_error_after_the_source():
    with pytest.raises(RulesError) as info:
        parse_rules({"rules": [_rule("a", notify=["x"]), _rule("b", channels=["y"])]}, source="my.yaml")
    assert str(info.value) == (
        "my.yaml: rule 'a': notify has unknown role or target 'x'; "
        "rule 'b': channels has unknown channels ['y'] (use ['sms', 'email', 'calendar'])"
    )
    assert isinstance(info.value, ValueError)


# --- Reading files ---------------------------------------------------------------------------

BAD_FILE = """\
rules:
  - name: meds
    when: {type: medication.changed, change: paused}
    notify: [neurology]
    channels: [sms]
  - name: invites
    when: {type: concern.raised}
    notify: [attendees]
    channels: [calendar]
  - name: meds
    when: {type: goal.updated}
    notify: [school]
    channels: [email]
"""
BAD_FILE_ERRORS = [
    "rule 'meds': when.change values ['paused'] are not among "
    "['started', 'stopped', 'dose_changed', 'schedule_changed']",
    "rule 'invites': notify 'attendees' only applies to check-in events",
    "rule 'invites': the calendar channel only applies to check-in events",
    "rule 'meds': name is used twice",
]


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad-rules.yaml"
    path.write_text(BAD_FILE, encoding="utf-8")
    return path


def test_load_rules_reports_every_error_with_the_path(bad_file):
    with pytest.raises(RulesError) as info:
        load_rules(bad_file)
    assert info.value.errors == BAD_FILE_ERRORS
    assert str(info.value).startswith(f"{bad_file}: rule 'meds': ")


def test_load_rules_reads_a_good_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [GOOD, CHECKIN_RULE]}), encoding="utf-8")
    assert [r.name for r in load_rules(path).rules] == ["good", "invites"]
    assert [r.name for r in load_rules(str(path)).rules] == ["good", "invites"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("rules:\n  - name: [unclosed\n", "not valid YAML"),
        ("rules: [a\n  b: c", "not valid YAML"),
        ("\tfoo: bar\n", "not valid YAML"),
        ("", "the file must be a mapping with a 'rules' list"),
        ("- just a list\n", "the file must be a mapping with a 'rules' list"),
    ],
)
def test_bad_yaml_is_a_rules_error(tmp_path, content, message):
    path = tmp_path / "rules.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(message)
    assert str(info.value).startswith(f"{path}: {message}")


def test_a_missing_file_is_a_rules_error(tmp_path):
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path / "nope.yaml")
    assert info.value.errors == ["cannot read: No such file or directory"]


def test_a_directory_is_a_rules_error(tmp_path):
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path)
    assert info.value.errors[0].startswith("cannot read: ")


def test_a_file_that_is_not_text_is_a_rules_error(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"\xff\xfe\x00\x00rules: []\n\x89PNG")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.errors[0].startswith("cannot read: not UTF-8 text")


# --- `careloop rules check FILE` -------------------------------------------------------------


def test_cli_check_passes_the_default_file():
    result = CliRunner().invoke(main, ["rules", "check", str(DEFAULT_RULES_FILE)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{DEFAULT_RULES_FILE}: 9 rules OK"


def test_cli_check_lists_every_error_by_rule_name(bad_file):
    result = CliRunner().invoke(main, ["rules", "check", str(bad_file)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{bad_file}: {error}" for error in BAD_FILE_ERRORS]


@pytest.mark.parametrize("content", [None, "rules: [oops\n", "rules: 3\n"])
def test_cli_check_fails_on_an_unreadable_or_malformed_file(tmp_path, content):
    path = tmp_path / "rules.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "check", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: ")
    assert "rules OK" not in result.output


# --- A bad rules file stops start-up ---------------------------------------------------------


def test_a_bad_rules_file_stops_app_start_up_with_the_checkers_message(tmp_path, bad_file):
    from careloop.service import create_app

    with pytest.raises(RulesError) as checked:
        load_rules(bad_file)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db", rules_file=bad_file, redis_url=None)
    with pytest.raises(RulesError) as started:
        create_app(settings=settings)
    assert str(started.value) == str(checked.value)
    assert started.value.errors == BAD_FILE_ERRORS
    assert not (tmp_path / "x.db").exists(), "start-up stopped before touching the database"


def test_a_missing_rules_file_stops_app_start_up(tmp_path):
    from careloop.service import create_app

    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/x.db", rules_file=tmp_path / "missing.yaml", redis_url=None
    )
    with pytest.raises(RulesError, match="cannot read"):
        create_app(settings=settings)
