"""Routing throughput: plan_deliveries with the shipped rules, against a baseline that only
builds the same number of output objects (no rule matching) in the same process.

    .venv/bin/python bench/bench_routing.py [N]
"""

from __future__ import annotations

import sys
import time

from careloop.config.settings import DEFAULT_RULES_FILE
from careloop.routing import EventView, MemberView, PlannedDelivery, plan_deliveries
from careloop.rules import load_rules, parse_rules
from careloop.vocabulary import ROLES as CARE_ROLES

ROLES = [*CARE_ROLES, "parent", "other"]  # a full team: every role, two parents
MEMBERS = [
    MemberView(id=f"mem_{i}", role=r, email=f"m{i}@example.org", phone=f"+1555555{i:04d}" if i % 2 else None)
    for i, r in enumerate(ROLES)
]
EVENTS = [
    EventView("e1", "medication.changed", {"medication": "x", "change": "started"}, "mem_0"),
    EventView("e2", "concern.raised", {"summary": "s", "severity": "urgent", "area": "swallowing"}),
    EventView("e3", "concern.raised", {"summary": "s", "severity": "low", "area": "movement"}),
    EventView("e4", "therapy.logged", {"discipline": "speech_therapy", "activity": "a"}),
    EventView("e5", "goal.updated", {"goal": "g", "status": "met"}),
    EventView(
        "e6",
        "checkin.scheduled",
        {"checkin_id": "c", "title": "t", "start": "s", "end": "e", "attendees": ["mem_0", "mem_4", "mem_9"]},
    ),
    EventView("e7", "note.added", {"text": "t", "voice": "child"}),
    EventView("e8", "checkin.cancelled", {"checkin_id": "c"}, previous_attendees=("mem_0", "mem_4")),
]


def main(n: int) -> None:
    rules = load_rules(DEFAULT_RULES_FILE)
    sizes = [len(plan_deliveries(e, MEMBERS, rules)) for e in EVENTS]

    def routed():
        for i in range(n):
            plan_deliveries(EVENTS[i % len(EVENTS)], MEMBERS, rules)

    def baseline():  # the same number of PlannedDelivery objects, no matching at all
        for i in range(n):
            [PlannedDelivery(m.id, "email") for m in MEMBERS[: sizes[i % len(EVENTS)]]]

    results = {}
    for name, fn in (("baseline", baseline), ("plan_deliveries", routed)):
        best = min(_timed(fn) for _ in range(3))
        results[name] = best
        print(f"{name:>16}: {n / best:12,.0f} events/s  ({best * 1e6 / n:7.2f} µs/event, best of 3)")
    print(
        f"{'ratio':>16}: {results['plan_deliveries'] / results['baseline']:.1f}× the baseline's time "
        f"({len(rules.rules)} rules, {len(MEMBERS)} members, {sum(sizes) / len(sizes):.1f} deliveries/event)"
    )


def scaling(n: int) -> None:
    """One event routed with 10, 1,000 and 10,000 rules, and to 5 or 500 members."""
    base = load_rules(DEFAULT_RULES_FILE).rules
    event = EventView("e", "medication.changed", {"medication": "med-7", "change": "started"}, "mem_0")

    def rules_of(count: int):
        extra = [
            {"name": f"r{i}", "when": {"type": "medication.changed", "medication": f"med-{i}"},
             "notify": ["neurology"], "channels": ["email"]}
            for i in range(count - len(base))
        ]  # fmt: skip
        default = [r.model_dump(mode="json", exclude_none=True) for r in base]
        for rule in default:
            rule["when"] = {
                "type": list(rule["when"]["types"]),
                **{k: list(v) for k, v in rule["when"]["match"]},
            }
        return parse_rules({"rules": default + extra})

    def team(size: int):
        return [
            MemberView(f"mem_{i}", ROLES[i % len(ROLES)], f"m{i}@example.org", f"+1555{i:07d}")
            for i in range(size)
        ]

    times = {}
    for count in (10, 1_000, 10_000):
        rules, members = rules_of(count), team(12)
        times[count] = min(_timed(lambda r=rules, m=members: [plan_deliveries(event, m, r) for _ in range(n)])
                           for _ in range(3)) / n  # fmt: skip
        print(f"{count:>8,} rules: {times[count] * 1e6:8.1f} µs/event")
    print(f"{'ratio':>14}: {times[10_000] / times[10]:.2f}× the time with 10 rules (target ≤ 2×)")
    rules = rules_of(10)
    per_team = {}
    for size in (5, 500):
        members = team(size)
        spent = min(
            _timed(lambda m=members: [plan_deliveries(event, m, rules) for _ in range(n // 10)])
            for _ in range(3)
        )
        per_team[size] = spent / (n // 10)
        print(f"{size:>8} members: {per_team[size] * 1e6:8.1f} µs/event")
    print(f"{'ratio':>14}: {per_team[500] / per_team[5]:.0f}× the time with 5 members (100× the members)")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
    scaling(2000)
