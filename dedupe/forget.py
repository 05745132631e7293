"""Retention policies for ``snap forget``: which snapshots a ``--keep-*`` policy keeps.

This module is the specification users rely on when they move from restic; it follows
restic's ``forget`` (``internal/data/snapshot_policy.go``, restic 0.17/0.18) rule for rule.
It is pure: no repository, no clock unless the caller omits ``now``, no output.

Grouping
    Snapshots are first split into groups (``group_snapshots``; grouping, filtering and the
    order below are implemented in ``dedupe/snapgroups.py``); the policy is applied to each
    group on its own, so every count below is per group. ``group_by`` is a subset of
    ``{"host", "paths", "tags"}`` (default ``host,paths``; empty = one group of everything).
    Paths and tags are compared as sorted lists, so ``/b /a`` and ``/a /b`` are one group.

Order
    A group is walked newest first. Snapshots with equal timestamps (compared as instants)
    are ordered by id, ascending: the smaller id counts as the newer one. (restic keeps the
    order in which snapshots were listed, which is arbitrary; ours is deterministic.)

Buckets and time zone
    Calendar rules put each snapshot in a bucket computed from its wall-clock time in a time
    zone ``tz``: hour = (year, month, day, hour), day = (year, month, day), ISO week =
    (ISO year, ISO week) (so 2020-12-31 and 2021-01-03 are both 2020-W53 and weeks run Monday
    00:00 to Sunday 23:59), month = (year, month), year = (year,).
    ``tz`` is a ``tzinfo`` (e.g. ``ZoneInfo("Europe/Berlin")``), ``None`` = the zone of the
    machine running forget (the default), or ``RECORDED`` = each snapshot's own wall clock
    as stored with its UTC offset. restic effectively does the latter (Go keeps the parsed
    offset); the two agree whenever backups were taken in the zone where forget runs.
    (With RECORDED and mixed offsets bucket order can jump; then the walk below counts.)
    In a DST fall-back the repeated hour is one hourly bucket and the day has 25 hours.

Counted rules: ``last``, ``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly`` (N > 0,
or ``UNLIMITED`` = -1)
    Walking newest to oldest, the rule keeps a snapshot whenever its bucket differs from the
    bucket of the snapshot this rule kept before, and each keep uses up one of the N counts
    (unlimited never runs out). ``last`` gives every snapshot its own bucket. Buckets never
    go back in time in one zone, so this is "the newest snapshot of each of the N most
    recent buckets that hold a snapshot". Buckets without snapshots do not count.
    Oldest rule (restic >= 0.17): when the walk reaches the group's oldest snapshot and the
    rule still has counts left (always, for unlimited), that snapshot is kept too, even if
    its bucket already has a kept snapshot; restic calls this "oldest daily snapshot". It
    keeps history as long as possible while counts are unused.

``within`` D
    Keeps every snapshot whose time is strictly after ``cutoff(D)``. The reference point is
    NOT now: it is the newest snapshot of the group whose time is before ``now`` (snapshots
    in the future are ignored for it, and are themselves kept since they are after any
    cutoff). If every snapshot is in the future, all are within.
    ``cutoff(D)`` = reference time, in the zone above, minus D's years, months and days on the
    calendar (Go's ``AddDate``: the wall clock keeps its time of day and an impossible date
    rolls over, so Mar 31 - 1m = "Feb 31" = Mar 3, or Mar 2 in a leap year), then minus
    D's hours as elapsed time. If the resulting wall time falls into a DST gap or fold it is
    resolved as Go's ``time.Date`` does: take the UTC offset in force at the instant that has
    the wall time's digits in UTC; if that offset does not reproduce the wall time, use the
    offset in force at the instant it gave. (Berlin 2021-10-31 02:30 -> 02:30 CET, the later;
    New York 2021-11-07 01:30 -> 01:30 EDT, the earlier.)

``within_hourly`` ... ``within_yearly`` D
    Among the snapshots strictly after ``cutoff(D)``, keep the newest of every bucket (no
    count). The oldest rule applies too: the group's oldest snapshot is kept if it is within.

``keep_tags``
    A list of tag lists; a snapshot is kept if it carries all tags of at least one list. The
    empty tag ``""`` means "has no tags at all", so ``--keep-tag ''`` keeps untagged snapshots.

A snapshot kept by any rule is kept; everything else in the group is removed. An empty
policy keeps nothing (restic >= 0.17): callers must refuse it unless the user explicitly
allows removing everything. ``GroupPlan.removes_all`` flags every group a plan would empty.

Reasons
    Each kept snapshot lists why, in restic's order (tags, within, last..yearly,
    within-hourly..within-yearly). ``str(reason)`` is snap's short form, ``reason.restic``
    restic's wording:

    =================  =========================  ===========================
    rule               str(reason)                reason.restic
    =================  =========================  ===========================
    last               ``last 2``                 ``last snapshot``
    daily (etc.)       ``daily 3``                ``daily snapshot``
    daily, oldest      ``daily 4 (oldest)``       ``oldest daily snapshot``
    within             ``within 30d``             ``within 30d``
    within-daily       ``daily within 30d``       ``daily within 30d``
    tag                ``tag a,b``                ``has tags [a, b]``
    =================  =========================  ===========================

    The number is the rule's counter: "weekly 3" is the third snapshot the weekly rule kept,
    counting from the newest (1-based), i.e. the newest snapshot of the third most recent week.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import (Any, Callable, Final, Generic, Hashable, Iterable, Literal, NamedTuple,
                    Union)

from .snapgroups import (DEFAULT_GROUP_BY, GroupKey, S, group_snapshots, has_tags,
                         sort_newest_first, utc_instant)

UNLIMITED: Final = -1
RECORDED: Final = "recorded"
TimeZone = Union[tzinfo, None, Literal["recorded"]]


# --- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRef:
    """A minimal snapshot description, for callers and tests without a repository."""

    id: str
    time: datetime
    hostname: str = ""
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"snapshot {self.id}: time must be timezone-aware")


# --- durations and counts ------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    """A calendar duration as in ``--keep-within 2y5m7d3h``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def is_zero(self) -> bool:
        return self.years == 0 and self.months == 0 and self.days == 0 and self.hours == 0

    def __str__(self) -> str:
        # restic's format: zero parts are left out, so a zero duration prints as "".
        parts = ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h"))
        return "".join(f"{n}{unit}" for n, unit in parts if n != 0)


_DURATION_PART = re.compile(r"(-?)([0-9]*)(.?)", re.DOTALL)
_UNIT_FIELD = {"y": "years", "m": "months", "d": "days", "h": "hours"}


def parse_duration(text: str) -> Duration:
    """Parse ``[<n>y][<n>m][<n>d][<n>h]`` (any order) like restic's ``ParseDuration``.

    Surrounding whitespace is ignored, the empty string is the zero duration (the rule is off),
    a unit given twice keeps its last value ("1d2d" = 2 days), ``m`` is months. Negative
    numbers are refused here (restic refuses them in ``forget`` too). Raises ``ValueError``.
    """
    values = {"years": 0, "months": 0, "days": 0, "hours": 0}
    rest = text.strip()
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every group may be empty, so the pattern always matches
        sign, digits, unit = match.groups()
        if not digits:
            raise ValueError(f"invalid duration {text!r}: no number found at {rest!r}")
        if len(digits) > 12:
            raise ValueError(f"invalid duration {text!r}: number {digits} is too large")
        number = int(digits)
        if sign:
            raise ValueError(f"invalid duration {text!r}: negative values are not allowed")
        if not unit:
            raise ValueError(f"invalid duration {text!r}: no unit found after number {number}")
        if unit not in _UNIT_FIELD:
            raise ValueError(
                f"invalid duration {text!r}: invalid unit {unit!r} found after number {number}"
                " (use y, m, d, h: e.g. 2y5m7d3h)"
            )
        values[_UNIT_FIELD[unit]] = number
        rest = rest[match.end() :]
    return Duration(**values)


def parse_count(text: str) -> int:
    """Parse a ``--keep-<rule>`` value: a non-negative integer or ``unlimited`` (-1)."""
    if text.strip() == "unlimited":
        return UNLIMITED
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"invalid count {text!r}: expected a number or 'unlimited'") from None
    if value < 0:
        raise ValueError(f"invalid count {text!r}: negative values not allowed, use 'unlimited'")
    return value


# --- policy ------------------------------------------------------------------------------

_COUNTED_RULES: Final = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN_RULES: Final = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class KeepPolicy:
    """The ``--keep-*`` options. Counts: 0 = rule off, ``UNLIMITED`` (-1) = no limit."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = field(default_factory=Duration)
    within_hourly: Duration = field(default_factory=Duration)
    within_daily: Duration = field(default_factory=Duration)
    within_weekly: Duration = field(default_factory=Duration)
    within_monthly: Duration = field(default_factory=Duration)
    within_yearly: Duration = field(default_factory=Duration)
    keep_tags: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        for rule in _COUNTED_RULES:
            count = getattr(self, rule)
            if isinstance(count, bool) or not isinstance(count, int) or count < UNLIMITED:
                raise ValueError(f"keep-{rule}: expected a count >= 0 or -1 (unlimited)")
        for name in ("within", *(f"within_{r}" for r in _WITHIN_RULES)):
            d = getattr(self, name)
            if not isinstance(d, Duration) or min(d.years, d.months, d.days, d.hours) < 0:
                name = name.replace("_", "-")
                raise ValueError(f"keep-{name}: durations with negative values are not allowed")
        # Accept any iterables of tags, store tuples so the policy stays hashable.
        object.__setattr__(self, "keep_tags", tuple(tuple(t) for t in self.keep_tags))

    def is_empty(self) -> bool:
        """True if no rule is set: such a policy keeps nothing."""
        return (
            all(getattr(self, rule) == 0 for rule in _COUNTED_RULES)
            and self.within.is_zero()
            and all(getattr(self, f"within_{r}").is_zero() for r in _WITHIN_RULES)
            and not self.keep_tags
        )

    def describe(self) -> str:
        """One line for humans, worded like restic's "Applying Policy: ..."."""
        counts = []
        for rule, word in zip(_COUNTED_RULES, ("latest", *_WITHIN_RULES)):
            n = getattr(self, rule)
            if n == UNLIMITED:
                counts.append(f"all {word}")
            elif n > 0:
                counts.append(f"{n} {word}")
        parts = [f"{', '.join(counts)} snapshots"] if counts else []
        for r in _WITHIN_RULES:
            d = getattr(self, f"within_{r}")
            if not d.is_zero():
                parts.append(f"{r} snapshots within {d}")
        if self.keep_tags:
            lists = ", ".join(",".join(t) if t != ("",) else "''" for t in self.keep_tags)
            parts.append(f"all snapshots with tags {lists}")
        if not self.within.is_zero():
            parts.append(f"all snapshots within {self.within} of the newest")
        return "keep " + ", ".join(parts) if parts else "remove all snapshots"


# --- time arithmetic -------------------------------------------------------------------------

_Offset = Callable[[datetime], timedelta]  # UTC offset in force at an instant


def _offset_function(zone: tzinfo | None) -> _Offset:
    if zone is None:
        return lambda instant: _utcoffset(instant.astimezone())  # the system's zone
    return lambda instant: _utcoffset(instant.astimezone(zone))


def _utcoffset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    assert offset is not None  # astimezone always gives an aware datetime
    return offset


def _go_date(wall: datetime, offset_at: _Offset) -> datetime:
    """The instant for a naive wall time, resolving gaps and folds as Go's time.Date."""
    as_utc = wall.replace(tzinfo=timezone.utc)
    offset = offset_at(as_utc)
    if offset_at(as_utc - offset) != offset:
        offset = offset_at(as_utc - offset)
    return as_utc - offset


def _cutoff(reference: datetime, d: Duration, zone: tzinfo | None) -> datetime | None:
    """``reference`` minus ``d`` like restic (AddDate, then hours); None = before all time."""
    wall = reference.astimezone(zone).replace(tzinfo=None)
    try:
        # Go's AddDate: normalise the month into the year, then let the day overflow.
        month_index = wall.month - 1 - d.months
        year = wall.year - d.years + month_index // 12
        if year < 1:
            return None
        first = date(year, month_index % 12 + 1, 1)
        day = first + timedelta(days=wall.day - 1 - d.days)
        instant = _go_date(datetime.combine(day, wall.time()), _offset_function(zone))
        return instant - timedelta(hours=d.hours)
    except (OverflowError, OSError):  # before year 1: every snapshot is younger than that
        return None


# --- applying a policy -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeepReason:
    """Why one rule keeps a snapshot. ``rule`` is one of: tag, within, last, hourly, daily,
    weekly, monthly, yearly, within-hourly, within-daily, within-weekly, within-monthly,
    within-yearly."""

    rule: str
    ordinal: int | None = None  # counted and within-<bucket> rules: 1 = the newest it kept
    oldest: bool = False  # kept by the oldest rule (bucket already had a kept snapshot)
    duration: Duration | None = None  # within rules
    tags: tuple[str, ...] | None = None  # tag rule: the tag list that matched

    def __str__(self) -> str:
        suffix = " (oldest)" if self.oldest else ""
        if self.rule == "tag":
            return "tag " + ",".join(tag or "''" for tag in self.tags or ())
        if self.rule == "within":
            return f"within {self.duration}"
        if self.rule.startswith("within-"):
            return f"{self.rule[len('within-'):]} within {self.duration}{suffix}"
        return f"{self.rule} {self.ordinal}{suffix}"

    @property
    def restic(self) -> str:
        """restic's wording of the same reason ("daily snapshot", "has tags [a, b]"...)."""
        oldest = "oldest " if self.oldest else ""
        if self.rule == "tag":
            return f"has tags [{', '.join(self.tags or ())}]"
        if self.rule == "within":
            return f"within {self.duration}"
        if self.rule.startswith("within-"):
            return f"{oldest}{self.rule[len('within-'):]} within {self.duration}"
        return f"{oldest}{self.rule} snapshot"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "n": self.ordinal,
            "oldest": self.oldest,
            "duration": None if self.duration is None else str(self.duration),
            "tags": None if self.tags is None else list(self.tags),
            "text": str(self),
            "restic": self.restic,
        }


class Decision(NamedTuple, Generic[S]):
    snapshot: S
    keep: bool
    reasons: tuple[KeepReason, ...]  # empty when removed


def _bucket_functions() -> dict[str, Callable[[datetime, int], Hashable]]:
    return {
        "last": lambda t, nr: nr,
        "hourly": lambda t, nr: (t.year, t.month, t.day, t.hour),
        "daily": lambda t, nr: (t.year, t.month, t.day),
        "weekly": lambda t, nr: tuple(t.isocalendar())[:2],
        "monthly": lambda t, nr: (t.year, t.month),
        "yearly": lambda t, nr: (t.year,),
    }


class _Rule:
    """One counted or within-<bucket> rule while walking a group; mirrors restic's buckets."""

    def __init__(self, name: str, count: int, bucket: Callable[[datetime, int], Hashable]):
        self.name, self.remaining, self.bucket = name, count, bucket
        self.last: Hashable = None  # bucket of the snapshot this rule kept last
        self.kept = 0

    def offer(self, wall: datetime, nr: int, is_oldest: bool) -> tuple[int, bool] | None:
        """Keep this snapshot? Returns (ordinal, kept-by-oldest-rule) or None."""
        if self.remaining == 0:
            return None
        value = self.bucket(wall, nr)
        if value == self.last and not is_oldest:
            return None
        oldest = value == self.last
        self.last = value
        self.kept += 1
        if self.remaining > 0:
            self.remaining -= 1
        return self.kept, oldest


def apply_policy(
    snapshots: Iterable[S],
    policy: KeepPolicy,
    *,
    tz: TimeZone = None,
    now: datetime | None = None,
) -> list[Decision[S]]:
    """Decide for every snapshot of ONE group whether ``policy`` keeps it, newest first.

    ``tz``: zone for buckets and calendar arithmetic (see the module docstring); ``now``:
    the current time, only used to ignore future snapshots as within reference (aware;
    defaults to the clock). Every input snapshot appears in the result exactly once.
    """
    if isinstance(tz, str) and tz != RECORDED:
        raise ValueError(f"tz must be a tzinfo, None (system zone) or {RECORDED!r}")
    recorded = tz == RECORDED
    ordered = sort_newest_first(snapshots)
    if not ordered:
        return []
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    zone = None if isinstance(tz, str) else tz

    def wall_of(moment: datetime) -> datetime:
        return moment if recorded else moment.astimezone(zone)

    # within rules measure back from the newest snapshot that is not in the future
    past = [s.time for s in ordered if utc_instant(s.time) < now]
    reference = past[0] if past else None
    arithmetic_zone = zone
    if recorded:
        arithmetic_zone = None if reference is None else reference.tzinfo

    def cutoff(d: Duration) -> datetime | None:
        return None if reference is None else _cutoff(reference, d, arithmetic_zone)

    buckets = _bucket_functions()
    counted = [_Rule(r, getattr(policy, r), buckets[r]) for r in _COUNTED_RULES]
    within_rules = [
        (_Rule(f"within-{r}", UNLIMITED, buckets[r]), d, cutoff(d))
        for r in _WITHIN_RULES
        if not (d := getattr(policy, f"within_{r}")).is_zero()
    ]
    within_cutoff = None if policy.within.is_zero() else cutoff(policy.within)

    decisions: list[Decision[S]] = []
    for nr, snap in enumerate(ordered):
        is_oldest = nr == len(ordered) - 1
        wall = wall_of(snap.time)
        reasons = [KeepReason("tag", tags=tl) for tl in policy.keep_tags if has_tags(snap.tags, tl)]
        instant = utc_instant(snap.time)
        if not policy.within.is_zero() and (within_cutoff is None or instant > within_cutoff):
            reasons.append(KeepReason("within", duration=policy.within))
        for rule in counted:
            if (hit := rule.offer(wall, nr, is_oldest)) is not None:
                reasons.append(KeepReason(rule.name, ordinal=hit[0], oldest=hit[1]))
        for rule, d, limit in within_rules:
            if limit is not None and instant <= limit:
                continue
            if (hit := rule.offer(wall, nr, is_oldest)) is not None:
                reasons.append(KeepReason(rule.name, ordinal=hit[0], oldest=hit[1], duration=d))
        decisions.append(Decision(snap, bool(reasons), tuple(reasons)))
    return decisions


# --- whole runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPlan(Generic[S]):
    """The decisions for one group (newest first)."""

    key: GroupKey
    decisions: tuple[Decision[S], ...]

    @property
    def keep(self) -> list[S]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[S]:
        return [d.snapshot for d in self.decisions if not d.keep]

    @property
    def removes_all(self) -> bool:
        """True if the policy would remove every snapshot of this (non-empty) group."""
        return bool(self.decisions) and not any(d.keep for d in self.decisions)

    def to_dict(self, render: Callable[[S], dict[str, Any]] | None = None) -> dict[str, Any]:
        """JSON data in the shape of restic's ``forget --json`` group (host, paths, tags, keep,
        remove, reasons with restic's "matches"), plus snap's structured ``reasons``.
        ``render`` turns a snapshot into JSON (default: id and time)."""
        show = render or (lambda s: {"id": s.id, "time": s.time.isoformat()})
        kept = [d for d in self.decisions if d.keep]
        return {
            **self.key.to_dict(),
            "keep": [show(d.snapshot) for d in kept],
            "remove": [show(s) for s in self.remove],
            "reasons": [
                {
                    "snapshot": show(d.snapshot),
                    "matches": [r.restic for r in d.reasons],
                    "reasons": [r.to_dict() for r in d.reasons],
                }
                for d in kept
            ],
        }


def plan_forget(
    snapshots: Iterable[S],
    policy: KeepPolicy,
    *,
    group_by: frozenset[str] | set[str] = DEFAULT_GROUP_BY,
    tz: TimeZone = None,
    now: datetime | None = None,
) -> list[GroupPlan[S]]:
    """Group ``snapshots`` and apply ``policy`` to each group (groups ordered by key)."""
    if now is None:
        now = datetime.now(timezone.utc)  # one clock reading for every group
    return [
        GroupPlan(key, tuple(apply_policy(members, policy, tz=tz, now=now)))
        for key, members in group_snapshots(snapshots, group_by)
    ]


def groups_removing_all(plans: Iterable[GroupPlan[S]]) -> list[GroupPlan[S]]:
    """The groups whose every snapshot would be removed: refuse these unless the user passed
    ``--unsafe-allow-remove-all``."""
    return [plan for plan in plans if plan.removes_all]
