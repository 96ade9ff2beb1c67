"""plan_deliveries, the pure routing function: no database, no Redis, no clock.

The default rules (config/rules.yaml) are checked against a full care team, then the
invariants (one delivery per member and channel, author and inactive members left out,
skip reasons, targets, any-of matching, stable order) with small rule sets of our own.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from careloop.config.settings import DEFAULT_RULES_FILE
from careloop.routing import EventView, MemberView, PlannedDelivery, plan_deliveries
from careloop.rules import CHANNELS, Rules, load_rules, parse_rules
from careloop.vocabulary import ROLES, SKIP_NO_EMAIL, SKIP_NO_PHONE

NOW = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)

DEFAULT_RULES = load_rules(DEFAULT_RULES_FILE)


def _member(member_id: str, role: str, **kwargs) -> MemberView:
    kwargs.setdefault("email", f"{member_id}@example.org")
    kwargs.setdefault("phone", "+15555550100")
    return MemberView(id=member_id, role=role, **kwargs)


TEAM = [
    _member("mem_p1", "parent"),
    _member("mem_p2", "parent"),
    _member("mem_g", "guardian"),
    _member("mem_child", "child"),
    _member("mem_neuro", "neurology"),
    _member("mem_devped", "developmental_pediatrics"),
    _member("mem_pt", "physical_therapy"),
    _member("mem_ot", "occupational_therapy"),
    _member("mem_slp", "speech_therapy"),
    _member("mem_school", "school"),
    _member("mem_other", "other"),
]
ALL_IDS = [m.id for m in TEAM]
TEAM_IDS = [m.id for m in TEAM if m.role != "child"]
FAMILY = ["mem_p1", "mem_p2", "mem_g"]

CHECKIN = {
    "checkin_id": "ck-1",
    "title": "Quarterly team check-in",
    "start": "2024-05-10T15:00:00+02:00",
    "end": "2024-05-10T16:00:00+02:00",
}


def _event(event_type: str, data: dict, author: str | None = None, previous=()) -> EventView:
    return EventView(
        id="evt_1", type=event_type, data=data, author_member_id=author, previous_attendees=tuple(previous)
    )


def _plan(event: EventView, members=TEAM, rules: Rules = DEFAULT_RULES) -> list[PlannedDelivery]:
    return plan_deliveries(event, list(members), rules, NOW)


def _pairs(planned: list[PlannedDelivery]) -> set[tuple[str, str]]:
    return {(p.member_id, p.channel) for p in planned}


def _by_key(planned: list[PlannedDelivery]) -> dict[tuple[str, str], PlannedDelivery]:
    return {(p.member_id, p.channel): p for p in planned}


def _rules(*rules: dict) -> Rules:
    return parse_rules({"rules": list(rules)})


def _expect(member_ids, channels) -> set[tuple[str, str]]:
    return {(m, c) for m in member_ids for c in channels}


# --- The default rules on a full team -------------------------------------------------------

DEFAULT_CASES = [
    pytest.param(
        "medication.changed",
        {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg"},
        (),
        _expect([*FAMILY, "mem_neuro", "mem_devped"], ["sms", "email"]),
        id="medication-to-prescribers-and-family",
    ),
    pytest.param(
        "medication.changed",
        {"medication": "melatonin", "change": "started"},
        (),
        _expect([*FAMILY, "mem_neuro", "mem_devped"], ["sms", "email"]),
        id="medication-any-change",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Not eating", "severity": "high"},
        (),
        _expect(TEAM_IDS, ["sms", "email"]),
        id="high-concern-without-area-to-team",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Very low mood", "severity": "urgent", "area": "mood"},
        (),
        _expect(TEAM_IDS, ["sms", "email"]),
        id="urgent-concern-to-team",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Choking on water", "severity": "urgent", "area": "swallowing"},
        (),
        _expect(TEAM_IDS, ["sms", "email"]),
        id="urgent-swallowing-to-team-including-slp",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Fewer words", "severity": "low", "area": "speech"},
        (),
        {("mem_slp", "email")},
        id="low-speech-to-slp-only",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Coughing at meals", "severity": "medium", "area": "swallowing"},
        (),
        {("mem_slp", "email")},
        id="medium-swallowing-to-slp-only",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Tripping more", "severity": "low", "area": "movement"},
        (),
        {("mem_pt", "email")},
        id="movement-to-pt",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Sore knee", "severity": "medium", "area": "pain"},
        (),
        {("mem_pt", "email")},
        id="pain-to-pt",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Absence seizure", "severity": "low", "area": "seizure"},
        (),
        _expect([*FAMILY, "mem_neuro"], ["sms", "email"]),
        id="seizure-to-neurology-and-family",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Long seizure", "severity": "urgent", "area": "seizure"},
        (),
        _expect(TEAM_IDS, ["sms", "email"]),
        id="urgent-seizure-to-team",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Waking at night", "severity": "low", "area": "sleep"},
        (),
        set(),
        id="low-sleep-to-nobody",
    ),
    pytest.param(
        "concern.raised",
        {"summary": "Something", "severity": "medium"},
        (),
        set(),
        id="medium-without-area-to-nobody",
    ),
    pytest.param(
        "therapy.logged",
        {"discipline": "occupational_therapy", "activity": "Buttons", "minutes": 30},
        (),
        _expect(FAMILY, ["email"]),
        id="therapy-to-family",
    ),
    pytest.param(
        "goal.updated",
        {"goal": "Walk 20 steps", "status": "met"},
        (),
        _expect([*FAMILY, "mem_school"], ["email"]),
        id="goal-to-family-and-school",
    ),
    pytest.param(
        "note.added",
        {"text": "I liked swimming today", "voice": "child"},
        (),
        _expect(TEAM_IDS, ["email"]),
        id="child-voice-note-to-team",
    ),
    pytest.param(
        "note.added",
        {"text": "Good week", "voice": "family"},
        (),
        set(),
        id="family-note-to-nobody",
    ),
    pytest.param(
        "note.added",
        {"text": "Plan agreed", "voice": "team"},
        (),
        set(),
        id="team-note-to-nobody",
    ),
    pytest.param(
        "checkin.scheduled",
        {**CHECKIN, "attendees": ["mem_p1", "mem_neuro", "mem_child"]},
        (),
        _expect(["mem_p1", "mem_child", "mem_neuro"], ["calendar"]),
        id="checkin-scheduled-to-attendees",
    ),
    pytest.param(
        "checkin.updated",
        {**CHECKIN, "attendees": ["mem_p1", "mem_slp"]},
        ("mem_neuro",),
        _expect(["mem_p1", "mem_neuro", "mem_slp"], ["calendar"]),
        id="checkin-updated-to-attendees-and-previous",
    ),
    pytest.param(
        "checkin.cancelled",
        {"checkin_id": "ck-1"},
        ("mem_p2", "mem_pt"),
        _expect(["mem_p2", "mem_pt"], ["calendar"]),
        id="checkin-cancelled-to-previous-attendees",
    ),
    pytest.param(
        "checkin.scheduled",
        {**CHECKIN, "attendees": ["mem_p1", "mem_not_in_notebook"]},
        (),
        {("mem_p1", "calendar")},
        id="checkin-attendee-not-a-member-ignored",
    ),
]


@pytest.mark.parametrize(("event_type", "data", "previous", "expected"), DEFAULT_CASES)
def test_default_rules_route_each_event_type(event_type, data, previous, expected):
    planned = _plan(_event(event_type, data, previous=previous))
    assert _pairs(planned) == expected
    assert len(planned) == len(expected), "one delivery per (member, channel)"
    assert all(p.skip_reason is None for p in planned), "the whole team is reachable"
    assert all(p.rules for p in planned)


def test_default_rules_file_has_every_rule_the_tests_rely_on():
    assert [r.name for r in DEFAULT_RULES.rules] == [
        "medication-to-prescribers-and-family",
        "serious-concerns-to-whole-team",
        "movement-concerns-to-physical-therapy",
        "speech-and-swallowing-to-speech-therapy",
        "seizures-to-neurology",
        "therapy-logs-to-family",
        "goals-to-family-and-school",
        "childs-own-words-to-team",
        "checkins-to-attendees",
    ]


def test_every_event_type_reaches_someone_under_the_defaults():
    from careloop.events import EVENT_DATA

    covered = {t for rule in DEFAULT_RULES.rules for t in rule.types}
    assert covered == set(EVENT_DATA)


@pytest.mark.parametrize("severity", ["high", "urgent"])
def test_serious_concerns_never_reach_the_child(severity):
    planned = _plan(_event("concern.raised", {"summary": "x", "severity": severity}))
    assert "mem_child" not in {p.member_id for p in planned}
    assert {p.member_id for p in planned} == set(TEAM_IDS)


# --- Which rules are recorded ------------------------------------------------------------


def test_urgent_speech_concern_records_both_rules_on_the_shared_delivery():
    planned = _by_key(
        _plan(_event("concern.raised", {"summary": "x", "severity": "urgent", "area": "speech"}))
    )
    assert planned[("mem_slp", "email")].rules == (
        "serious-concerns-to-whole-team",
        "speech-and-swallowing-to-speech-therapy",
    )
    assert planned[("mem_slp", "sms")].rules == ("serious-concerns-to-whole-team",)
    assert planned[("mem_p1", "email")].rules == ("serious-concerns-to-whole-team",)


def test_urgent_seizure_records_team_and_seizure_rules():
    planned = _by_key(
        _plan(_event("concern.raised", {"summary": "x", "severity": "urgent", "area": "seizure"}))
    )
    both = ("serious-concerns-to-whole-team", "seizures-to-neurology")
    for key in _expect([*FAMILY, "mem_neuro"], ["sms", "email"]):
        assert planned[key].rules == both
    assert planned[("mem_school", "sms")].rules == ("serious-concerns-to-whole-team",)


def test_one_delivery_per_member_and_channel_with_all_matching_rule_names():
    rules = _rules(
        {"name": "a", "when": {"type": "goal.updated"}, "notify": ["parent"], "channels": ["email", "sms"]},
        {
            "name": "b",
            "when": {"type": "goal.updated", "status": "met"},
            "notify": ["mem_p1"],
            "channels": ["email"],
        },
        {"name": "c", "when": {"type": "goal.updated"}, "notify": ["everyone"], "channels": ["email"]},
        {"name": "d", "when": {"type": "note.added"}, "notify": ["parent"], "channels": ["email"]},
    )
    planned = _plan(_event("goal.updated", {"goal": "g", "status": "met"}), rules=rules)
    keys = [(p.member_id, p.channel) for p in planned]
    assert len(keys) == len(set(keys))
    by_key = _by_key(planned)
    assert by_key[("mem_p1", "email")].rules == ("a", "b", "c")
    assert by_key[("mem_p2", "email")].rules == ("a", "c")
    assert by_key[("mem_p1", "sms")].rules == ("a",)
    assert by_key[("mem_school", "email")].rules == ("c",)
    assert len(planned) == len(TEAM) + 2  # everyone by email, plus the two parents by SMS


def test_a_member_named_twice_in_one_rule_gets_the_rule_once():
    rules = _rules(
        {
            "name": "r",
            "when": {"type": "goal.updated"},
            "notify": ["parent", "mem_p1", "team"],
            "channels": ["email"],
        }
    )
    planned = _by_key(_plan(_event("goal.updated", {"goal": "g", "status": "new"}), rules=rules))
    assert planned[("mem_p1", "email")].rules == ("r",)
    assert len(planned) == len(TEAM_IDS)


# --- Author, inactive members, unreachable members -------------------------------------------


def test_the_author_is_never_notified():
    event = _event("medication.changed", {"medication": "m", "change": "stopped"}, author="mem_neuro")
    ids = {p.member_id for p in _plan(event)}
    assert "mem_neuro" not in ids
    assert ids == {*FAMILY, "mem_devped"}


def test_an_attending_author_still_gets_the_invite_for_their_own_checkin():
    """An invite is the author's own calendar entry, not an alert about their own update."""
    event = _event("checkin.scheduled", {**CHECKIN, "attendees": ["mem_p1", "mem_pt"]}, author="mem_pt")
    assert _pairs(_plan(event)) == {("mem_p1", "calendar"), ("mem_pt", "calendar")}


def test_the_author_gets_no_alert_on_other_channels_even_when_a_rule_names_calendar_too():
    rules = _rules(
        {
            "name": "r",
            "when": {"type": "checkin.scheduled"},
            "notify": ["attendees"],
            "channels": ["email", "calendar"],
        }
    )
    event = _event("checkin.scheduled", {**CHECKIN, "attendees": ["mem_p1", "mem_pt"]}, author="mem_pt")
    assert _pairs(_plan(event, rules=rules)) == {
        ("mem_p1", "email"),
        ("mem_p1", "calendar"),
        ("mem_pt", "calendar"),
    }


def test_the_author_named_by_id_is_still_not_notified():
    rules = _rules(
        {"name": "r", "when": {"type": "goal.updated"}, "notify": ["mem_school"], "channels": ["email"]}
    )
    event = _event("goal.updated", {"goal": "g", "status": "new"}, author="mem_school")
    assert _plan(event, rules=rules) == []


def test_inactive_members_are_never_notified():
    members = [
        m if m.id not in ("mem_p2", "mem_neuro") else MemberView(m.id, m.role, m.email, m.phone, active=False)
        for m in TEAM
    ]
    planned = _plan(_event("medication.changed", {"medication": "m", "change": "started"}), members=members)
    assert {p.member_id for p in planned} == {"mem_p1", "mem_g", "mem_devped"}


def test_inactive_attendee_gets_no_invite():
    members = [MemberView("mem_a", "parent", "a@x.org", active=False), _member("mem_b", "parent")]
    event = _event("checkin.cancelled", {"checkin_id": "c"}, previous=["mem_a", "mem_b"])
    assert _pairs(_plan(event, members=members)) == {("mem_b", "calendar")}


@pytest.mark.parametrize("event_type", ["checkin.cancelled", "checkin.updated"])
def test_a_deactivated_member_whose_calendar_holds_the_check_in_gets_only_its_calendar_message(event_type):
    rules = _rules(
        {
            "name": "r",
            "when": {"type": event_type},
            "notify": ["attendees"],
            "channels": ["calendar", "email"],
        }
    )
    members = [MemberView("mem_a", "parent", "a@x.org", active=False), _member("mem_b", "parent")]
    data = (
        {"checkin_id": "c"}
        if event_type == "checkin.cancelled"
        else {**CHECKIN, "attendees": ["mem_a", "mem_b"]}
    )
    previous = ("mem_a", "mem_b") if event_type == "checkin.cancelled" else ()
    held = EventView(
        id="evt_1",
        type=event_type,
        data=data,
        previous_attendees=previous,
        invite_holders=("mem_a", "mem_b"),
    )
    assert _pairs(_plan(held, members=members, rules=rules)) == {
        ("mem_a", "calendar"),
        ("mem_b", "calendar"),
        ("mem_b", "email"),
    }
    never_held = EventView(id="evt_1", type=event_type, data=data, previous_attendees=previous)
    assert _pairs(_plan(never_held, members=members, rules=rules)) == {
        ("mem_b", "calendar"),
        ("mem_b", "email"),
    }


@pytest.mark.parametrize(
    ("email", "phone", "expected"),
    [
        ("a@x.org", "+15555550100", {"sms": None, "email": None}),
        ("a@x.org", None, {"sms": SKIP_NO_PHONE, "email": None}),
        ("a@x.org", "", {"sms": SKIP_NO_PHONE, "email": None}),
        (None, "+15555550100", {"sms": None, "email": SKIP_NO_EMAIL}),
        (None, None, {"sms": SKIP_NO_PHONE, "email": SKIP_NO_EMAIL}),
    ],
)
def test_unreachable_channels_are_planned_with_a_skip_reason(email, phone, expected):
    members = [MemberView("mem_n", "neurology", email=email, phone=phone)]
    planned = _plan(_event("medication.changed", {"medication": "m", "change": "started"}), members=members)
    assert {p.channel: p.skip_reason for p in planned} == expected
    assert all(p.rules == ("medication-to-prescribers-and-family",) for p in planned)


@pytest.mark.parametrize(("email", "reason"), [(None, SKIP_NO_EMAIL), ("a@x.org", None)])
def test_calendar_needs_an_email_address(email, reason):
    members = [MemberView("mem_a", "parent", email=email, phone="+15555550100")]
    event = _event("checkin.scheduled", {**CHECKIN, "attendees": ["mem_a"]})
    assert _plan(event, members=members) == [
        PlannedDelivery("mem_a", "calendar", ("checkins-to-attendees",), reason)
    ]


# --- Targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify", "expected_ids"),
    [
        (["everyone"], ALL_IDS),
        (["team"], TEAM_IDS),
        (["child"], ["mem_child"]),
        (["mem_slp"], ["mem_slp"]),
        (["mem_slp", "mem_child"], ["mem_child", "mem_slp"]),
        (["mem_nobody"], []),
        (["school", "mem_ot"], ["mem_ot", "mem_school"]),
        (["parent"], ["mem_p1", "mem_p2"]),
        (["guardian"], ["mem_g"]),
        (["other"], ["mem_other"]),
    ],
)
def test_targets(notify, expected_ids):
    rules = _rules({"name": "r", "when": {"type": "note.added"}, "notify": notify, "channels": ["email"]})
    planned = _plan(_event("note.added", {"text": "t", "voice": "team"}), rules=rules)
    assert [p.member_id for p in planned] == expected_ids


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_a_target(role):
    rules = _rules({"name": "r", "when": {"type": "note.added"}, "notify": [role], "channels": ["email"]})
    planned = _plan(_event("note.added", {"text": "t", "voice": "team"}), rules=rules)
    assert {p.member_id for p in planned} == {m.id for m in TEAM if m.role == role}
    assert planned


def test_attendees_target_only_reaches_attendees_and_previous_attendees():
    rules = _rules(
        {
            "name": "r",
            "when": {"type": "checkin.updated"},
            "notify": ["attendees"],
            "channels": ["calendar", "sms"],
        }
    )
    event = _event("checkin.updated", {**CHECKIN, "attendees": ["mem_ot"]}, previous=["mem_school"])
    assert _pairs(_plan(event, rules=rules)) == _expect(["mem_ot", "mem_school"], ["calendar", "sms"])


# --- Matching --------------------------------------------------------------------------------

ANY_OF = _rules(
    {
        "name": "low-or-medium",
        "when": {"type": "concern.raised", "severity": ["low", "medium"]},
        "notify": ["school"],
        "channels": ["email"],
    },
    {
        "name": "speech-when-high",
        "when": {"type": "concern.raised", "severity": "high", "area": ["speech", "swallowing"]},
        "notify": ["speech_therapy"],
        "channels": ["sms"],
    },
    {
        "name": "goal-or-therapy",
        "when": {"type": ["goal.updated", "therapy.logged"]},
        "notify": ["other"],
        "channels": ["email"],
    },
)


@pytest.mark.parametrize(
    ("event_type", "data", "expected_rules"),
    [
        ("concern.raised", {"summary": "s", "severity": "low"}, ["low-or-medium"]),
        ("concern.raised", {"summary": "s", "severity": "medium", "area": "speech"}, ["low-or-medium"]),
        ("concern.raised", {"summary": "s", "severity": "high"}, []),
        ("concern.raised", {"summary": "s", "severity": "urgent", "area": "speech"}, []),
        ("concern.raised", {"summary": "s", "severity": "high", "area": "speech"}, ["speech-when-high"]),
        ("concern.raised", {"summary": "s", "severity": "high", "area": "swallowing"}, ["speech-when-high"]),
        ("concern.raised", {"summary": "s", "severity": "high", "area": "mood"}, []),
        ("goal.updated", {"goal": "g", "status": "new"}, ["goal-or-therapy"]),
        ("therapy.logged", {"discipline": "speech_therapy", "activity": "a"}, ["goal-or-therapy"]),
        ("note.added", {"text": "t", "voice": "child"}, []),
    ],
)
def test_list_values_in_when_mean_any_of_and_fields_mean_all_of(event_type, data, expected_rules):
    planned = _plan(_event(event_type, data), rules=ANY_OF)
    assert sorted({name for p in planned for name in p.rules}) == expected_rules


def test_matching_on_free_text_and_numbers():
    rules = _rules(
        {
            "name": "keppra",
            "when": {"type": "medication.changed", "medication": "Keppra"},
            "notify": ["neurology"],
            "channels": ["email"],
        },
        {
            "name": "long-sessions",
            "when": {"type": "therapy.logged", "minutes": [60, 90]},
            "notify": ["parent"],
            "channels": ["email"],
        },
    )
    assert _pairs(
        _plan(_event("medication.changed", {"medication": "Keppra", "change": "started"}), rules=rules)
    ) == {("mem_neuro", "email")}
    assert (
        _plan(_event("medication.changed", {"medication": "Other", "change": "started"}), rules=rules) == []
    )
    logged = {"discipline": "physical_therapy", "activity": "a"}
    assert len(_plan(_event("therapy.logged", {**logged, "minutes": 90}), rules=rules)) == 2
    assert _plan(_event("therapy.logged", {**logged, "minutes": 30}), rules=rules) == []
    assert _plan(_event("therapy.logged", logged), rules=rules) == []


def test_no_rules_no_deliveries():
    assert (
        _plan(_event("medication.changed", {"medication": "m", "change": "started"}), rules=Rules(())) == []
    )


# --- Order -----------------------------------------------------------------------------------


def test_order_is_member_order_then_channel_order_of_first_mention():
    rules = _rules(
        {
            "name": "school-first",
            "when": {"type": "goal.updated"},
            "notify": ["school"],
            "channels": ["email"],
        },
        {
            "name": "parents",
            "when": {"type": "goal.updated"},
            "notify": ["parent"],
            "channels": ["sms", "email"],
        },
        {"name": "more", "when": {"type": "goal.updated"}, "notify": ["school"], "channels": ["sms"]},
    )
    planned = _plan(_event("goal.updated", {"goal": "g", "status": "new"}), rules=rules)
    assert [(p.member_id, p.channel) for p in planned] == [
        ("mem_p1", "sms"),
        ("mem_p1", "email"),
        ("mem_p2", "sms"),
        ("mem_p2", "email"),
        ("mem_school", "email"),
        ("mem_school", "sms"),
    ]


def test_order_follows_the_members_given_and_is_repeatable():
    event = _event("concern.raised", {"summary": "s", "severity": "urgent", "area": "seizure"})
    first = _plan(event)
    assert first == _plan(event)
    ids = list(dict.fromkeys(p.member_id for p in first))
    assert ids == TEAM_IDS
    shuffled = TEAM[:]
    random.Random(7).shuffle(shuffled)
    again = _plan(event, members=shuffled)
    assert set(again) == set(first)
    assert list(dict.fromkeys(p.member_id for p in again)) == [m.id for m in shuffled if m.role != "child"]


def test_now_does_not_change_the_plan():
    event = _event("medication.changed", {"medication": "m", "change": "started"})
    plans = [
        plan_deliveries(event, TEAM, DEFAULT_RULES, when) for when in (None, NOW, NOW + timedelta(hours=13))
    ]
    assert plans[0] == plans[1] == plans[2]
    assert plans[0]


# --- Randomised invariants (a seeded stand-in for a property test) ---------------------------

SAMPLE_DATA = {
    "medication.changed": [{"medication": "m", "change": c} for c in ("started", "stopped", "dose_changed")],
    "concern.raised": [
        {"summary": "s", "severity": s, **({"area": a} if a else {})}
        for s in ("low", "medium", "high", "urgent")
        for a in (None, "movement", "speech", "swallowing", "pain", "seizure", "sleep")
    ],
    "therapy.logged": [{"discipline": "physical_therapy", "activity": "a"}],
    "goal.updated": [{"goal": "g", "status": "met"}],
    "note.added": [{"text": "t", "voice": v} for v in ("child", "family", "team")],
    "checkin.scheduled": ["attendees"],
    "checkin.updated": ["attendees"],
    "checkin.cancelled": [{"checkin_id": "c"}],
}


def _random_case(rng: random.Random):
    members = []
    for i in range(rng.randint(0, 14)):
        members.append(
            MemberView(
                id=f"mem_{i}",
                role=rng.choice(ROLES),
                email=rng.choice([None, f"m{i}@example.org"]),
                phone=rng.choice([None, "+15555550100"]),
                active=rng.random() > 0.2,
            )
        )
    ids = [m.id for m in members] + ["mem_ghost"]
    event_type = rng.choice(sorted(SAMPLE_DATA))
    data = rng.choice(SAMPLE_DATA[event_type])
    if data == "attendees":
        data = {**CHECKIN, "attendees": rng.sample(ids, rng.randint(1, len(ids)))}
    previous = rng.sample(ids, rng.randint(0, len(ids))) if event_type.startswith("checkin.") else []
    author = rng.choice([None, *ids])
    return _event(event_type, data, author=author, previous=previous), members


def _expected_reference(event: EventView, members: list[MemberView], rules: Rules) -> dict:
    """A slow, obviously-correct model of routing: (member, channel) → rule names."""
    expected: dict[tuple[str, str], list[str]] = {}
    attendees = set(event.data.get("attendees") or ()) | set(event.previous_attendees)
    for rule in rules.rules:
        if event.type not in rule.types:
            continue
        if any(event.data.get(field) not in values for field, values in rule.match):
            continue
        for member in members:
            if not member.active:
                continue
            wanted = (
                member.role in rule.notify
                or member.id in rule.notify
                or "everyone" in rule.notify
                or ("team" in rule.notify and member.role != "child")
                or ("attendees" in rule.notify and member.id in attendees)
            )
            if wanted:
                for channel in rule.channels:
                    if member.id == event.author_member_id and channel != "calendar":
                        continue
                    expected.setdefault((member.id, channel), []).append(rule.name)
    return expected


@pytest.mark.parametrize("seed", range(200))
def test_randomised_invariants(seed):
    rng = random.Random(seed)
    event, members = _random_case(rng)
    planned = plan_deliveries(event, members, DEFAULT_RULES, NOW)
    by_id = {m.id: m for m in members}
    keys = [(p.member_id, p.channel) for p in planned]
    assert len(keys) == len(set(keys))
    assert {k: list(p.rules) for k, p in zip(keys, planned, strict=True)} == _expected_reference(
        event, members, DEFAULT_RULES
    )
    positions = [list(by_id).index(p.member_id) for p in planned]
    assert positions == sorted(positions)
    for p in planned:
        member = by_id[p.member_id]
        assert member.active and (member.id != event.author_member_id or p.channel == "calendar")
        assert p.channel in CHANNELS
        assert p.rules and len(p.rules) == len(set(p.rules))
        if p.channel == "sms":
            assert p.skip_reason == (None if member.phone else SKIP_NO_PHONE)
        else:
            assert p.skip_reason == (None if member.email else SKIP_NO_EMAIL)
    assert plan_deliveries(event, members, DEFAULT_RULES, NOW) == planned


def test_the_rule_index_finds_every_rule_that_matches_in_file_order():
    """Routing reads only the rules that could match (by type and first data field); on
    random rule sets and events it plans exactly what checking every rule would."""
    import random

    from careloop.routing import rule_matches

    rng = random.Random(7)
    areas = ["movement", "speech", "swallowing", "sleep", "pain"]
    raw = []
    for i in range(300):
        when = {"type": rng.choice(["concern.raised", "note.added", "medication.changed"])}
        if when["type"] == "concern.raised" and rng.random() < 0.7:
            when["area"] = rng.sample(areas, rng.randint(1, 3))
            if rng.random() < 0.5:
                when["severity"] = rng.choice(["low", "high", "urgent"])
        elif when["type"] == "medication.changed" and rng.random() < 0.7:
            when["medication"] = f"med-{rng.randint(0, 20)}"
        raw.append({"name": f"r{i}", "when": when, "notify": ["team"], "channels": ["email"]})
    rules = parse_rules({"rules": raw})
    for _ in range(200):
        event_type = rng.choice(["concern.raised", "note.added", "medication.changed"])
        data = {
            "concern.raised": {"summary": "s", "severity": rng.choice(["low", "high", "urgent"]),
                               "area": rng.choice(areas)},
            "note.added": {"text": "t", "voice": "child"},
            "medication.changed": {"medication": f"med-{rng.randint(0, 20)}", "change": "started"},
        }[event_type]  # fmt: skip
        event = EventView("e", event_type, data)
        expected = [r for r in rules.rules if rule_matches(r, event)]
        assert [r for r in rules.candidates(event_type, data) if rule_matches(r, event)] == expected
