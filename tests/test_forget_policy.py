"""Retention policy of `snap forget`: pinned cases plus property tests against a naive model.

The unit tests pin the subtle cases by hand-computed expectations (DST, ISO weeks, calendar
arithmetic, equal times). The property tests compare ``apply_policy`` (restic's sequential
walk) with ``reference_apply`` below, a set-based restatement of the documented rules.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from datetime import datetime, timedelta, timezone, tzinfo
from functools import cmp_to_key
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dedupe.forget import (
    RECORDED,
    UNLIMITED,
    Duration,
    KeepPolicy,
    SnapshotRef,
    apply_policy,
    groups_removing_all,
    parse_count,
    parse_duration,
    plan_forget,
)
from dedupe.snapgroups import (
    DEFAULT_GROUP_BY,
    filter_snapshots,
    group_snapshots,
    parse_group_by,
    parse_tag_list,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # 30-minute DST shift
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def at(iso: str) -> datetime:
    """An aware instant; a bare ISO string means UTC."""
    t = datetime.fromisoformat(iso)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def snap(id: str, iso: str, host: str = "h", paths=("/data",), tags=()) -> SnapshotRef:
    return SnapshotRef(id, at(iso), host, tuple(paths), tuple(tags))


def kept(snaps, policy, tz: tzinfo | None | str = UTC, now=FAR_FUTURE) -> list[str]:
    return [d.snapshot.id for d in apply_policy(snaps, policy, tz=tz, now=now) if d.keep]


def reasons(snaps, policy, tz=UTC, now=FAR_FUTURE) -> dict[str, list[str]]:
    out = {}
    for d in apply_policy(snaps, policy, tz=tz, now=now):
        if d.keep:
            out[d.snapshot.id] = [str(r) for r in d.reasons]
    return out


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2y5m7d3h", Duration(2, 5, 7, 3)),
        ("30d", Duration(days=30)),
        ("3h1y", Duration(years=1, hours=3)),
        ("  1m ", Duration(months=1)),
        ("1d2d", Duration(days=2)),  # restic: a repeated unit keeps the last value
        ("", Duration()),  # the empty string switches the rule off
        ("0d", Duration()),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("5", "no unit found after number 5"),
        ("5x", "invalid unit 'x' found after number 5"),
        ("1D", "invalid unit 'D'"),
        ("d", "no number found"),
        ("1d 2h", "no number found"),
        ("-1d", "negative values are not allowed"),
        ("+1d", "no number found"),
        ("1" * 20 + "d", "too large"),
    ],
)
def test_parse_duration_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_duration_prints_like_restic():
    assert str(Duration(2, 5, 7, 3)) == "2y5m7d3h"
    assert str(Duration(days=30)) == "30d"
    assert str(Duration(years=1, hours=2)) == "1y2h"


def test_parse_count_tags_and_group_by():
    assert parse_count("unlimited") == UNLIMITED and parse_count("7") == 7
    for bad in ("-1", "x", ""):
        with pytest.raises(ValueError):
            parse_count(bad)
    assert parse_tag_list("a, b") == ("a", "b") and parse_tag_list("") == ("",)
    assert parse_group_by("host,paths") == DEFAULT_GROUP_BY == {"host", "paths"}
    assert parse_group_by("hosts,tag,path") == {"host", "tags", "paths"}
    assert parse_group_by("") == frozenset()
    with pytest.raises(ValueError, match="unknown grouping option 'hots'"):
        parse_group_by("hots")


def test_policy_validation_and_emptiness():
    with pytest.raises(ValueError, match="keep-daily"):
        KeepPolicy(daily=-2)
    with pytest.raises(ValueError, match="keep-within-weekly"):
        KeepPolicy(within_weekly=Duration(days=-1))
    assert KeepPolicy().is_empty()
    assert KeepPolicy(within=Duration()).is_empty()
    assert not KeepPolicy(keep_tags=[["a"]]).is_empty()
    assert not KeepPolicy(yearly=UNLIMITED).is_empty()
    assert KeepPolicy(keep_tags=[["a", "b"]]).keep_tags == (("a", "b"),)


# --- last, ties, unlimited, oldest -------------------------------------------------------------


def test_keep_last_with_equal_times_breaks_ties_by_id():
    snaps = [snap(i, "2021-05-01T10:00") for i in ("c", "a", "b")] + [snap("z", "2021-04-01")]
    for perm in itertools.permutations(snaps):
        decisions = apply_policy(perm, KeepPolicy(last=2), tz=UTC, now=FAR_FUTURE)
        assert [d.snapshot.id for d in decisions] == ["a", "b", "c", "z"]
        assert [d.keep for d in decisions] == [True, True, False, False]


def test_keep_last_counts_and_unlimited():
    snaps = [snap(f"s{i}", f"2021-05-0{i}T10:00") for i in range(1, 6)]
    assert reasons(snaps, KeepPolicy(last=3)) == {
        "s5": ["last 1"],
        "s4": ["last 2"],
        "s3": ["last 3"],
    }
    assert kept(snaps, KeepPolicy(last=UNLIMITED)) == ["s5", "s4", "s3", "s2", "s1"]
    assert kept(snaps, KeepPolicy(last=10)) == ["s5", "s4", "s3", "s2", "s1"]


def test_oldest_snapshot_kept_while_counts_remain():
    # three days with two snapshots each; keep-daily 5 has counts left at the oldest one
    snaps = [snap(f"{d}{h}", f"2021-05-0{d}T{h}:00") for d in (1, 2, 3) for h in (10, 20)]
    r = reasons(snaps, KeepPolicy(daily=5))
    assert r == {"320": ["daily 1"], "220": ["daily 2"], "120": ["daily 3"],
                 "110": ["daily 4 (oldest)"]}
    decision = apply_policy(snaps, KeepPolicy(daily=5), tz=UTC, now=FAR_FUTURE)[-1]
    assert [x.restic for x in decision.reasons] == ["oldest daily snapshot"]
    # exactly as many days as the count: nothing left for the oldest
    assert kept(snaps, KeepPolicy(daily=3)) == ["320", "220", "120"]
    # unlimited never runs out
    assert kept(snaps, KeepPolicy(daily=UNLIMITED)) == ["320", "220", "120", "110"]


def test_restic_documentation_example_keep_daily_4():
    sundays = [snap(f"w{i:02}", (datetime(2019, 9, 1, 11) + timedelta(weeks=i)).isoformat())
               for i in range(12)]
    assert kept(sundays, KeepPolicy(daily=4)) == ["w11", "w10", "w09", "w08"]


def test_overlapping_rules_each_give_a_reason():
    days = [snap(f"d{i:02}", (datetime(2021, 6, 1, 12) + timedelta(days=i)).isoformat())
            for i in range(20)]  # 2021-06-01 (Tue) .. 2021-06-20 (Sun)
    r = reasons(days, KeepPolicy(last=2, daily=3, weekly=2, monthly=1))
    assert r == {
        "d19": ["last 1", "daily 1", "weekly 1", "monthly 1"],
        "d18": ["last 2", "daily 2"],
        "d17": ["daily 3"],
        "d12": ["weekly 2"],  # Sunday 2021-06-13 ends the previous ISO week
    }


# --- calendar buckets, ISO weeks, local time --------------------------------------------------


def test_daily_bucket_follows_the_zone_across_midnight():
    snaps = [
        snap("a", "2021-06-01T21:00"),  # 23:00 Berlin
        snap("b", "2021-06-01T21:30"),  # 23:30 Berlin
        snap("c", "2021-06-01T22:30"),  # 00:30 Berlin, next day
        snap("d", "2021-05-30T10:00"),
    ]
    assert kept(snaps, KeepPolicy(daily=2), tz=BERLIN) == ["c", "b"]
    assert kept(snaps, KeepPolicy(daily=2), tz=UTC) == ["c", "d"]


def test_iso_week_at_year_boundary():
    snaps = [
        snap("sun52", "2020-12-27T12:00"),  # 2020-W52
        snap("thu53", "2020-12-31T12:00"),  # 2020-W53
        snap("sat53", "2021-01-02T12:00"),  # 2020-W53 although in 2021
        snap("mon01", "2021-01-04T12:00"),  # 2021-W01
    ]
    assert kept(snaps, KeepPolicy(weekly=2)) == ["mon01", "sat53"]
    assert kept(snaps, KeepPolicy(weekly=3)) == ["mon01", "sat53", "sun52"]
    assert kept(snaps, KeepPolicy(yearly=2)) == ["mon01", "thu53"]
    assert reasons(snaps, KeepPolicy(yearly=3))["sun52"] == ["yearly 3 (oldest)"]
    # 2024-12-30 is in ISO week 2025-W01
    snaps = [snap("a", "2024-12-29T12:00"), snap("b", "2024-12-30T12:00"),
             snap("c", "2025-01-05T12:00")]
    assert kept(snaps, KeepPolicy(weekly=1)) == ["c"]
    assert kept(snaps, KeepPolicy(weekly=2)) == ["c", "a"]


def test_berlin_fall_back_repeated_hour_is_one_bucket_and_day_has_25_hours():
    snaps = [
        snap("0330", "2021-10-31T02:30"),  # 03:30 CET
        snap("0230b", "2021-10-31T01:30"),  # 02:30 CET (second time)
        snap("0230a", "2021-10-31T00:30"),  # 02:30 CEST (first time)
        snap("0130", "2021-10-30T23:30"),  # 01:30 CEST
    ]
    assert kept(snaps, KeepPolicy(hourly=3), tz=BERLIN) == ["0330", "0230b", "0130"]
    assert kept(snaps, KeepPolicy(hourly=3), tz=UTC) == ["0330", "0230b", "0230a"]
    day = [
        snap("nov1", "2021-10-31T23:30"),  # 00:30 CET Nov 1
        snap("late", "2021-10-31T22:30"),  # 23:30 CET Oct 31
        snap("early", "2021-10-30T22:30"),  # 00:30 CEST Oct 31, 25 hours earlier
        snap("oct29", "2021-10-29T12:00"),
    ]
    assert kept(day, KeepPolicy(daily=2), tz=BERLIN) == ["nov1", "late"]
    assert kept(day, KeepPolicy(daily=3), tz=BERLIN) == ["nov1", "late", "oct29"]
    assert kept(day, KeepPolicy(daily=2), tz=UTC) == ["nov1", "early"]


def test_berlin_spring_forward_day_has_23_hours():
    snaps = [
        snap("last", "2021-03-28T21:59"),  # 23:59 CEST Mar 28
        snap("first", "2021-03-27T23:00"),  # 00:00 CET Mar 28
        snap("mar26", "2021-03-26T12:00"),
    ]
    assert kept(snaps, KeepPolicy(daily=2), tz=BERLIN) == ["last", "mar26"]
    assert kept(snaps, KeepPolicy(daily=2), tz=UTC) == ["last", "first"]
    hours = [snap("b", "2021-03-28T01:00"), snap("a", "2021-03-28T00:59")]  # 03:00 / 01:59
    assert kept(hours, KeepPolicy(hourly=1), tz=BERLIN) == ["b"]
    assert kept(hours, KeepPolicy(hourly=2), tz=BERLIN) == ["b", "a"]


def test_new_york_fall_back_and_spring_forward():
    snaps = [
        snap("0230", "2021-11-07T07:30"),  # 02:30 EST
        snap("0130b", "2021-11-07T06:30"),  # 01:30 EST
        snap("0130a", "2021-11-07T05:30"),  # 01:30 EDT
        snap("0030", "2021-11-07T04:30"),  # 00:30 EDT
    ]
    assert kept(snaps, KeepPolicy(hourly=3), tz=NEW_YORK) == ["0230", "0130b", "0030"]
    assert kept(snaps, KeepPolicy(hourly=3), tz=UTC) == ["0230", "0130b", "0130a"]
    day = [
        snap("late", "2021-03-15T03:59"),  # 23:59 EDT Mar 14
        snap("early", "2021-03-14T05:00"),  # 00:00 EST Mar 14
        snap("mar13", "2021-03-13T12:00"),
    ]
    assert kept(day, KeepPolicy(daily=2), tz=NEW_YORK) == ["late", "mar13"]
    assert kept(day, KeepPolicy(daily=2), tz=UTC) == ["late", "early"]


def test_recorded_offset_buckets_each_snapshot_by_its_own_wall_clock():
    snaps = [
        snap("b", "2021-06-02T00:30+02:00"),  # 22:30 UTC Jun 1
        snap("a", "2021-06-01T23:30+02:00"),  # 21:30 UTC Jun 1
        snap("old", "2021-05-01T12:00+02:00"),
    ]
    assert kept(snaps, KeepPolicy(daily=2), tz=RECORDED) == ["b", "a"]
    assert kept(snaps, KeepPolicy(daily=2), tz=UTC) == ["b", "old"]


def test_default_zone_is_the_system_zone(monkeypatch):
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available")
    snaps = [snap("b", "2021-10-31T01:30"), snap("a", "2021-10-31T00:30"),
             snap("x", "2021-10-30T23:30")]
    cutoff_case = [snap("n", "2021-03-29T00:30"), snap("in", "2021-03-28T01:45"),
                   snap("out", "2021-03-28T01:15")]
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert kept(snaps, KeepPolicy(hourly=2), tz=None) == ["b", "x"]
        assert kept(cutoff_case, KeepPolicy(within=Duration(days=1)), tz=None) == ["n", "in"]
    finally:
        monkeypatch.undo()
        time.tzset()


# --- within --------------------------------------------------------------------------------


def test_within_subtracts_months_on_the_calendar_like_go():
    # 2021-03-31 minus 1 month is "Feb 31" = Mar 3; the snapshot exactly at the cutoff goes
    snaps = [snap("ref", "2021-03-31T12:00"), snap("in", "2021-03-03T12:00:01"),
             snap("edge", "2021-03-03T12:00"), snap("feb", "2021-02-28T12:00")]
    assert kept(snaps, KeepPolicy(within=parse_duration("1m"))) == ["ref", "in"]
    leap = [snap("ref", "2020-03-31T12:00"), snap("in", "2020-03-02T12:00:01"),
            snap("edge", "2020-03-02T12:00")]
    assert kept(leap, KeepPolicy(within=parse_duration("1m"))) == ["ref", "in"]
    # 2020-02-29 minus 1y is "2019-02-29" = 2019-03-01
    year = [snap("ref", "2020-02-29T00:00"), snap("in", "2019-03-01T00:00:01"),
            snap("edge", "2019-03-01T00:00")]
    assert kept(year, KeepPolicy(within=parse_duration("1y"))) == ["ref", "in"]
    # days on the calendar, hours as elapsed time
    hours = [snap("ref", "2021-06-10T12:00"), snap("in", "2021-06-09T09:00:01"),
             snap("edge", "2021-06-09T09:00")]
    assert kept(hours, KeepPolicy(within=parse_duration("1d3h"))) == ["ref", "in"]
    assert reasons(hours, KeepPolicy(within=parse_duration("1d3h")))["in"] == ["within 1d3h"]


def test_within_is_relative_to_the_newest_snapshot_not_now():
    snaps = [snap("new", "2020-01-10T00:00"), snap("in", "2020-01-05T00:00"),
             snap("out", "2019-12-01T00:00")]
    assert kept(snaps, KeepPolicy(within=Duration(days=7)), now=at("2024-01-01")) == ["new", "in"]


def test_within_ignores_future_snapshots_as_reference_and_keeps_them():
    now = at("2021-06-10T00:00")
    snaps = [snap("future", "2021-06-20T00:00"), snap("ref", "2021-06-09T00:00"),
             snap("in", "2021-06-01T00:00"), snap("out", "2021-05-01T00:00")]
    policy = KeepPolicy(within=Duration(days=10))
    assert kept(snaps, policy, now=now) == ["future", "ref", "in"]
    all_future = [snap("a", "2021-07-01T00:00"), snap("b", "2020-07-01T00:00")]
    assert kept(all_future, policy, now=at("2020-01-01")) == ["a", "b"]


def test_within_a_day_across_spring_forward_is_23_hours_in_berlin():
    snaps = [snap("ref", "2021-03-28T10:00"), snap("x", "2021-03-27T10:30")]  # 12:00 CEST
    policy = KeepPolicy(within=Duration(days=1))
    assert kept(snaps, policy, tz=BERLIN) == ["ref"]  # cutoff 12:00 CET = 11:00Z
    assert kept(snaps, policy, tz=UTC) == ["ref", "x"]  # cutoff 10:00Z


@pytest.mark.parametrize(
    "zone, reference, inside, outside",
    [
        # fold: Berlin 2021-10-31 02:30 resolves to the later 02:30 CET (01:30Z) ...
        (BERLIN, "2021-11-01T01:30", "2021-10-31T01:45", "2021-10-31T00:45"),
        # ... but New York 2021-11-07 01:30 to the earlier 01:30 EDT (05:30Z), as in Go.
        (NEW_YORK, "2021-11-08T06:30", "2021-11-07T05:45", "2021-11-07T05:15"),
        # gap: Berlin 2021-03-28 02:30 does not exist; Go gives 01:30Z (03:30 CEST) ...
        (BERLIN, "2021-03-29T00:30", "2021-03-28T01:45", "2021-03-28T01:15"),
        # ... and New York 2021-03-14 02:30 gives 06:30Z (01:30 EST).
        (NEW_YORK, "2021-03-15T06:30", "2021-03-14T06:45", "2021-03-14T06:15"),
    ],
)
def test_within_cutoff_in_a_dst_gap_or_fold_resolves_like_go(zone, reference, inside, outside):
    snaps = [snap("ref", reference), snap("in", inside), snap("out", outside)]
    assert kept(snaps, KeepPolicy(within=Duration(days=1)), tz=zone) == ["ref", "in"]


def test_within_bucket_rules_and_their_oldest_keep():
    snaps = [
        snap("d3b", "2021-06-03T20:00"),
        snap("d3a", "2021-06-03T10:00"),
        snap("d2", "2021-06-02T10:00"),
        snap("d1b", "2021-06-01T20:00"),
        snap("d1a", "2021-06-01T10:00"),
        snap("may", "2021-05-01T10:00"),
    ]
    r = reasons(snaps, KeepPolicy(within_daily=Duration(days=3)))
    assert r == {"d3b": ["daily within 3d"], "d2": ["daily within 3d"], "d1b": ["daily within 3d"]}
    # when the group's oldest snapshot is within, it is kept as well
    r = reasons(snaps[:-1], KeepPolicy(within_daily=Duration(days=3)))
    assert r["d1a"] == ["daily within 3d (oldest)"]
    d = apply_policy(snaps[:-1], KeepPolicy(within_daily=Duration(days=3)), tz=UTC, now=FAR_FUTURE)
    assert [x.restic for x in d[-1].reasons] == ["oldest daily within 3d"]
    assert [x.ordinal for x in d[-1].reasons] == [4]


# --- tags, grouping, whole plans -----------------------------------------------------------


def test_keep_tag_needs_all_tags_of_one_list_and_empty_means_untagged():
    snaps = [snap("none", "2021-06-04"), snap("a", "2021-06-03", tags=["a"]),
             snap("ab", "2021-06-02", tags=["b", "a"]), snap("b", "2021-06-01", tags=["b"])]
    assert kept(snaps, KeepPolicy(keep_tags=[parse_tag_list("a,b")])) == ["ab"]
    assert kept(snaps, KeepPolicy(keep_tags=[("a",), ("b",)])) == ["a", "ab", "b"]
    assert kept(snaps, KeepPolicy(keep_tags=[parse_tag_list("")])) == ["none"]
    d = apply_policy(snaps, KeepPolicy(keep_tags=[("a", "b")]), tz=UTC, now=FAR_FUTURE)[2]
    assert [str(x) for x in d.reasons] == ["tag a,b"]
    assert [x.restic for x in d.reasons] == ["has tags [a, b]"]


def test_grouping_keys_sort_paths_and_tags():
    snaps = [
        snap("1", "2021-06-01", host="h2", paths=["/b", "/a"], tags=["y", "x"]),
        snap("2", "2021-06-02", host="h2", paths=["/a", "/b"], tags=["x"]),
        snap("3", "2021-06-03", host="h1", paths=["/a"]),
        snap("4", "2021-06-04", host="h1", paths=["/a"], tags=["x"]),
    ]
    groups = group_snapshots(snaps)
    assert [(str(k), [s.id for s in m]) for k, m in groups] == [
        ("host h1, paths [/a]", ["4", "3"]),
        ("host h2, paths [/a, /b]", ["2", "1"]),
    ]
    assert groups[1][0].to_dict() == {"host": "h2", "paths": ["/a", "/b"], "tags": None}
    by_tags = group_snapshots(snaps, parse_group_by("tags"))
    assert [(k.tags, [s.id for s in m]) for k, m in by_tags] == [
        ((), ["3"]), (("x",), ["4", "2"]), (("x", "y"), ["1"])
    ]
    assert [str(k) for k, _ in group_snapshots(snaps, frozenset())] == ["all snapshots"]
    with pytest.raises(ValueError):
        group_snapshots(snaps, {"hostname"})


def test_plan_counts_per_group_and_flags_groups_it_would_empty():
    snaps = [snap(f"{h}{i}", f"2021-06-0{i}", host=h, tags=["keep"] if h == "a" else [])
             for h in "ab" for i in range(1, 4)]
    plans = plan_forget(snaps, KeepPolicy(last=1), now=FAR_FUTURE, tz=UTC)
    assert [p.keep for p in plans] == [[snaps[2]], [snaps[5]]]
    assert groups_removing_all(plans) == []
    plans = plan_forget(snaps, KeepPolicy(keep_tags=[("keep",)]), now=FAR_FUTURE, tz=UTC)
    assert [str(p.key) for p in groups_removing_all(plans)] == ["host b, paths [/data]"]
    # an empty policy keeps nothing: every group is flagged
    assert len(groups_removing_all(plan_forget(snaps, KeepPolicy(), now=FAR_FUTURE))) == 2
    assert plan_forget([], KeepPolicy(last=1)) == []


def test_json_data_and_policy_description():
    snaps = [snap("b", "2021-06-02T12:00"), snap("a", "2021-06-01T12:00")]
    policy = KeepPolicy(last=1, within=Duration(hours=1), keep_tags=[("x", "y")])
    (plan,) = plan_forget(snaps, policy, tz=UTC, now=FAR_FUTURE)
    assert plan.to_dict() == {
        "host": "h", "paths": ["/data"], "tags": None,
        "keep": [{"id": "b", "time": "2021-06-02T12:00:00+00:00"}],
        "remove": [{"id": "a", "time": "2021-06-01T12:00:00+00:00"}],
        "reasons": [{
            "snapshot": {"id": "b", "time": "2021-06-02T12:00:00+00:00"},
            "matches": ["within 1h", "last snapshot"],
            "reasons": [
                {"rule": "within", "n": None, "oldest": False, "duration": "1h", "tags": None,
                 "text": "within 1h", "restic": "within 1h"},
                {"rule": "last", "n": 1, "oldest": False, "duration": None, "tags": None,
                 "text": "last 1", "restic": "last snapshot"},
            ],
        }],
    }
    assert plan.to_dict(lambda s: {"short_id": s.id})["keep"] == [{"short_id": "b"}]
    assert policy.describe() == ("keep 1 latest snapshots, all snapshots with tags x,y, "
                                 "all snapshots within 1h of the newest")
    assert KeepPolicy(daily=UNLIMITED, within_weekly=Duration(months=1)).describe() == (
        "keep all daily snapshots, weekly snapshots within 1m")


def test_durations_reaching_before_year_one_keep_everything():
    snaps = [snap("new", "2021-01-01T00:00"), snap("old", "0001-01-02T00:00")]
    for text in ("2020y", "2021y", "2020y1d", "999999999y", "999999999d", "999999999999h"):
        for zone in (None, UTC, NEW_YORK, ZoneInfo("Asia/Tokyo"), RECORDED):
            assert kept(snaps, KeepPolicy(within=parse_duration(text)), tz=zone) == ["new", "old"]
    assert kept(snaps, KeepPolicy(within=parse_duration("2019y11m30d")), tz=UTC) == ["new"]
    with pytest.raises(ValueError, match="tz must be"):
        apply_policy(snaps, KeepPolicy(last=1), tz="Europe/Berlin")


def test_filter_snapshots_like_restic():
    snaps = [snap("1", "2021-06-01", host="h1", paths=["/a", "/b"], tags=["x", "y"]),
             snap("2", "2021-06-02", host="h2", paths=["/a"]),
             snap("3", "2021-06-03", host="h1", paths=["/b"], tags=["y"])]

    def ids(**kw):
        return [s.id for s in filter_snapshots(snaps, **kw)]

    assert ids() == ["1", "2", "3"]
    assert ids(hosts=["h1"]) == ["1", "3"]
    assert ids(tag_lists=[("x", "y")]) == ["1"]
    assert ids(tag_lists=[("x",), ("",)]) == ["1", "2"]
    assert ids(paths=["/a", "/b"]) == ["1"]
    assert ids(paths=["/b"], hosts=["h1", "h2"]) == ["1", "3"]


def test_repository_snapshot_class_fits():
    snapshot_module = pytest.importorskip("dedupe.snapshot")
    snaps = [snapshot_module.Snapshot(time=at(f"2021-06-0{i}T12:00+02:00"), tree=bytes(32),
                                      paths=["/a"], hostname="h", tags=["t"], id=f"{i:064x}")
             for i in range(1, 4)]
    plans = plan_forget(snaps, KeepPolicy(last=2), tz=UTC, now=FAR_FUTURE)
    assert [s.id for s in plans[0].keep] == [snaps[2].id, snaps[1].id]


# --- property tests against a reference model ---------------------------------------------------


def _newer_first(a, b) -> int:
    ta, tb = a.time.timestamp(), b.time.timestamp()  # exact: whole minutes in the tests
    if ta != tb:
        return -1 if ta > tb else 1
    return -1 if a.id < b.id else (1 if a.id > b.id else 0)


def _reference_cutoff(ref: datetime, d: Duration, zone: tzinfo) -> datetime | None:
    """restic: ref.AddDate(-y, -m, -d).Add(-h), written out step by step."""
    wall = ref.astimezone(zone)
    year, month = wall.year - d.years, wall.month - d.months
    while month < 1:
        month, year = month + 12, year - 1
    if year < 1:
        return None
    # Go lets the day overflow: "Feb 31" is Mar 3; count days from the 1st of the month.
    ordinal = datetime(year, month, 1).toordinal() + wall.day - 1 - d.days
    if ordinal < 1:
        return None
    naive = datetime.fromordinal(ordinal).replace(
        hour=wall.hour, minute=wall.minute, second=wall.second, microsecond=wall.microsecond
    )
    # time.Date: offset in force at the instant that has the wall digits in UTC; if that
    # offset does not give back a moment with that offset, the one in force at what it gave.
    digits_in_utc = naive.replace(tzinfo=UTC)
    first = digits_in_utc.astimezone(zone).utcoffset()
    moment = digits_in_utc - first
    second = moment.astimezone(zone).utcoffset()
    if second != first:
        moment = digits_in_utc - second
    return moment - timedelta(hours=d.hours)


def _reference_bucket(rule: str, s, zone: tzinfo):
    t = s.time.astimezone(zone)
    return {
        "last": s.id,
        "hourly": t.strftime("%Y-%m-%d %H"),
        "daily": t.strftime("%Y-%m-%d"),
        "weekly": "%04d-W%02d" % t.isocalendar()[:2],
        "monthly": t.strftime("%Y-%m"),
        "yearly": t.strftime("%Y"),
    }[rule]


def reference_apply(snaps, policy: KeepPolicy, zone: tzinfo, now: datetime):
    """Naive restatement: returns [(id, [reason strings])] newest first."""
    order = sorted(snaps, key=cmp_to_key(_newer_first))
    if not order:
        return []
    why: dict[str, list[str]] = {s.id: [] for s in order}
    for s in order:
        for tag_list in policy.keep_tags:
            if all((tag in s.tags) if tag else not s.tags for tag in tag_list):
                why[s.id].append("tag " + ",".join(t or "''" for t in tag_list))
    past = [s.time for s in order if s.time.timestamp() < now.timestamp()]
    latest = max(past, key=datetime.timestamp) if past else None

    def within(s, d: Duration) -> bool:
        cut = None if latest is None else _reference_cutoff(latest, d, zone)
        return cut is None or s.time.timestamp() > cut.timestamp()

    if not policy.within.is_zero():
        for s in order:
            if within(s, policy.within):
                why[s.id].append(f"within {policy.within}")

    def newest_per_bucket(rule, members, count, label, suffix=""):
        """Keep the newest of each of the first `count` buckets, plus the oldest extra."""
        firsts: dict[str, object] = {}
        for s in members:
            firsts.setdefault(_reference_bucket(rule, s, zone), s)
        chosen = list(firsts.values()) if count == UNLIMITED else list(firsts.values())[:count]
        for n, s in enumerate(chosen, 1):
            why[s.id].append(label(n))
        oldest = order[-1]
        if members and members[-1] is oldest and oldest not in chosen:
            if count == UNLIMITED or len(firsts) < count:
                why[oldest.id].append(label(len(chosen) + 1) + " (oldest)")

    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        count = getattr(policy, rule)
        if count != 0:
            newest_per_bucket(rule, order, count, lambda n, r=rule: f"{r} {n}")
    for rule in ("hourly", "daily", "weekly", "monthly", "yearly"):
        d = getattr(policy, f"within_{rule}")
        if not d.is_zero():
            members = [s for s in order if within(s, d)]
            newest_per_bucket(rule, members, UNLIMITED, lambda n, r=rule, d=d: f"{r} within {d}")
    return [(s.id, why[s.id]) for s in order]


# The hard places: each DST change together with its zone (Berlin, New York, Lord Howe with
# its 30-minute shift), and calendar edges (ISO weeks across new year, a leap day, month ends)
# to be seen from any zone. The snapshots of one example cluster around one place.
DST_CHANGES = [(at(t), zone) for t, zone in (
    ("2020-03-29T01:00", BERLIN), ("2020-10-25T01:00", BERLIN), ("2021-03-28T01:00", BERLIN),
    ("2021-10-31T01:00", BERLIN), ("2021-03-14T07:00", NEW_YORK), ("2021-11-07T06:00", NEW_YORK),
    ("2021-04-03T15:00", LORD_HOWE), ("2021-10-02T15:30", LORD_HOWE),
)]
CALENDAR_EDGES = [at(t) for t in (
    "2020-12-31T23:00", "2021-01-03T23:00", "2024-12-31T23:00", "2015-12-31T23:00",
    "2019-12-31T23:00", "2020-02-29T12:00", "2021-03-31T12:00", "2021-05-31T22:30",
)]
ZONES = [UTC, BERLIN, NEW_YORK, LORD_HOWE, timezone(timedelta(hours=5, minutes=45)),
         timezone(timedelta(hours=-9))]
REPRESENTATIONS = [UTC, BERLIN, timezone(timedelta(hours=2))]  # irrelevant but varied


@st.composite
def places(draw):
    """(anchor instant, zone to evaluate in): often a DST change seen from its own zone."""
    if draw(st.booleans()):
        anchor, zone = draw(st.sampled_from(DST_CHANGES))
        if draw(st.integers(0, 3)) == 0:
            zone = draw(st.sampled_from(ZONES))
        return anchor, zone
    return draw(st.sampled_from(CALENDAR_EDGES)), draw(st.sampled_from(ZONES))


def near(anchor: datetime, spread_hours: int = 9600):
    """Times up to spread_hours around anchor, half of them within 30 hours; mostly on whole
    hours so that snapshots often sit exactly on a within cutoff."""
    return st.builds(
        lambda hours, minutes: anchor + timedelta(hours=hours, minutes=minutes),
        st.one_of(st.integers(-30, 30), st.integers(-spread_hours, spread_hours)),
        st.sampled_from([0, 0, 0, 30, 59]),
    )


counts = st.sampled_from([0] * 6 + [1, 1, 2, 2, 3, 5, UNLIMITED])
# mostly off: each of the six within rules on by default would keep nearly everything
durations = st.one_of(
    *[st.just(Duration())] * 4,
    st.builds(Duration, st.sampled_from([0, 0, 0, 1]), st.sampled_from([0, 0, 0, 1, 2, 13]),
              st.integers(0, 40), st.sampled_from([0, 0, 1, 5, 23, 49])),
)
tag_lists = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(st.lists(st.sampled_from(["a", "b", ""]), min_size=1, max_size=2).map(tuple),
             min_size=1, max_size=2),
)
policies = st.builds(
    KeepPolicy, counts, counts, counts, counts, counts, counts,
    durations, durations, durations, durations, durations, durations, tag_lists,
)


@st.composite
def scenarios(draw, max_size=18):
    """(snapshots of one group, zone, now)."""
    anchor, zone = draw(places())
    spread = draw(st.sampled_from([30, 240, 9600]))  # hours (DST), days (weeks), a year
    pool = draw(st.lists(near(anchor, spread), min_size=1, max_size=10))  # few: equal times
    snaps = []
    for i in range(draw(st.integers(0, max_size))):
        t = draw(st.sampled_from(pool)).astimezone(draw(st.sampled_from(REPRESENTATIONS)))
        tags = draw(st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True))
        snaps.append(SnapshotRef(f"{draw(st.integers(0, 2**32)):08x}{i:02x}", t, "h", ("/",),
                                 tuple(tags)))
    now = draw(st.one_of(st.just(FAR_FUTURE), st.just(FAR_FUTURE), near(anchor, spread)))
    return snaps, zone, now


# Example counts keep the whole file well under 20 s on a shared 2-core machine.
REFERENCE = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(REFERENCE, max_examples=60)


def _as_pairs(decisions):
    return [(d.snapshot.id, [str(r) for r in d.reasons]) for d in decisions]


@REFERENCE
@given(scenarios(), policies)
def test_matches_reference_model(scenario, policy):
    snaps, zone, now = scenario
    assert _as_pairs(apply_policy(snaps, policy, tz=zone, now=now)) == reference_apply(
        snaps, policy, zone, now)


@st.composite
def within_edges(draw):
    """A reference time near a hard place, often at the same wall time some days later, so
    that the cutoff lands in a DST gap or fold or on a month end, and a duration back."""
    anchor, zone = draw(places())
    days = draw(st.integers(0, 40))
    # within two hours of the change is where Go's gap and fold resolution matters
    minutes = draw(st.one_of(st.integers(-180, 180), st.integers(-120, 60)))
    reference = anchor + timedelta(days=days, minutes=minutes)
    duration = Duration(
        draw(st.sampled_from([0, 0, 0, 0, 1])), draw(st.sampled_from([0, 0, 0, 0, 1, 2, 13])),
        draw(st.one_of(st.just(days), st.integers(0, 40))),
        draw(st.one_of(st.just(0), st.integers(0, 50))))
    assume(not duration.is_zero())
    return reference, duration, zone


@REFERENCE
@given(within_edges())
def test_within_cutoff_is_exact_around_dst_and_month_ends(edge):
    reference, duration, zone = edge
    cut = _reference_cutoff(reference, duration, zone)
    assume(cut is not None and cut < reference - timedelta(minutes=1))
    snaps = [SnapshotRef("ref", reference),
             SnapshotRef("after", cut + timedelta(minutes=1)),
             SnapshotRef("at", cut.astimezone(BERLIN)),
             SnapshotRef("before", cut - timedelta(minutes=1))]
    assert kept(snaps, KeepPolicy(within=duration), tz=zone) == ["ref", "after"]
    if cut < reference - timedelta(hours=2):  # then "ref" and "after" are in different hours
        assert kept(snaps, KeepPolicy(within_hourly=duration), tz=zone) == ["ref", "after"]


@PROPERTY
@given(scenarios(), policies, st.randoms(use_true_random=False))
def test_every_snapshot_decided_once_whatever_the_input_order(scenario, policy, rnd):
    snaps, zone, now = scenario
    decisions = apply_policy(snaps, policy, tz=zone, now=now)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snaps)
    assert all(d.keep == bool(d.reasons) for d in decisions)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)
    shuffled = list(snaps)
    rnd.shuffle(shuffled)
    assert apply_policy(shuffled, policy, tz=zone, now=now) == decisions


@PROPERTY
@given(scenarios(), st.integers(-1, 25))
def test_keep_last_n_keeps_min_n_len(scenario, n):
    snaps, _, _ = scenario
    expected = len(snaps) if n == UNLIMITED else min(n, len(snaps))
    assert len(kept(snaps, KeepPolicy(last=n))) == expected


@PROPERTY
@given(scenarios(), policies)
def test_counted_rules_never_keep_more_than_their_count(scenario, policy):
    snaps, zone, now = scenario
    decisions = apply_policy(snaps, policy, tz=zone, now=now)
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        count = getattr(policy, rule)
        used = sum(r.rule == rule for d in decisions for r in d.reasons)
        assert used <= (len(snaps) if count == UNLIMITED else count)


@PROPERTY
@given(scenarios(), policies)
def test_applying_the_policy_to_what_it_kept_keeps_all_of_it(scenario, policy):
    snaps, zone, now = scenario
    # Holds for restic's rules in one zone: every rule keeps in the kept set what it kept
    # before (bucket order is monotonic, the within reference can only move back in time).
    first = [d.snapshot for d in apply_policy(snaps, policy, tz=zone, now=now) if d.keep]
    again = apply_policy(first, policy, tz=zone, now=now)
    assert all(d.keep for d in again)


@PROPERTY
@given(scenarios(), policies,
       st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly"]))
def test_raising_a_count_never_removes_a_kept_snapshot(scenario, policy, rule):
    snaps, zone, now = scenario
    count = getattr(policy, rule)
    assume(count != UNLIMITED)
    more = dataclasses.replace(policy, **{rule: count + 1})
    before = set(kept(snaps, policy, tz=zone, now=now))
    assert before <= set(kept(snaps, more, tz=zone, now=now))


rows = st.tuples(st.sampled_from(["h1", "h2"]), st.sampled_from([("/a",), ("/b", "/a")]),
                st.sampled_from([(), ("x",), ("y", "x")]), near(CALENDAR_EDGES[0]))


@PROPERTY
@given(st.lists(rows, max_size=20), policies,
       st.sampled_from(["", "host", "host,paths", "paths,tags", "host,paths,tags"]))
def test_plans_partition_snapshots_into_independent_groups(rows, policy, group_by):
    snaps = [SnapshotRef(f"{i:04x}", t, h, p, tags) for i, (h, p, tags, t) in enumerate(rows)]
    plans = plan_forget(snaps, policy, group_by=parse_group_by(group_by), tz=UTC, now=FAR_FUTURE)
    seen = [d.snapshot.id for p in plans for d in p.decisions]
    assert sorted(seen) == sorted(s.id for s in snaps)
    assert len({p.key for p in plans}) == len(plans)
    for p in plans:
        members = [d.snapshot for d in p.decisions]
        assert list(p.decisions) == apply_policy(members, policy, tz=UTC, now=FAR_FUTURE)
        assert p.removes_all == (not p.keep)
