"""IANA time zone names: the ones careloop accepts for a notebook or a member.

The list is IANA's own, as the ``tzdata`` package ships it (zones and their links such as
``US/Eastern``), not whatever files a machine's ``/usr/share/zoneinfo`` happens to hold: that
folder also answers to ``localtime``, ``posixrules``, ``posix/…`` and ``right/…``, which are
no place's name and must not end up as the TZID of a calendar invite. ``Factory`` ("local time
zone must be set") is IANA's placeholder, not a place, and is left out too.
"""

from __future__ import annotations

from importlib.resources import files
from zoneinfo import ZoneInfo

TIME_ZONE_FORMAT = "iana-time-zone"
"""The OpenAPI ``format`` of a time zone name (the list is too long to publish as an enum)."""

NOT_PLACES = frozenset({"Factory"})
"""Names in IANA's list that are not a time zone anyone lives in."""

TIME_ZONES: tuple[str, ...] = tuple(
    sorted(
        name
        for name in files("tzdata").joinpath("zones").read_text(encoding="utf-8").split()
        if name not in NOT_PLACES
    )
)
"""Every accepted name, sorted."""

_ACCEPTED = frozenset(TIME_ZONES)


def check_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone careloop can use.

    Raises:
        ValueError: naming an example of what is expected.
    """
    if name not in _ACCEPTED:
        raise ValueError("must be an IANA time zone name such as 'America/Chicago'")
    ZoneInfo(name)  # the machine's zoneinfo (or tzdata's) must be able to load it
    return name
