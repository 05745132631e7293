"""The benchmark runner's rounds: which round a repeated phase reports (benchmarks/run.py)."""

from benchmarks import report
from benchmarks.run import _combine


def _step(wall, rss, status="ok"):
    return {"status": status, "wall": wall, "maxrss_kb": rss, "utime": 0.0, "stime": 0.0}


def test_median_round_is_reported_with_the_largest_peak():
    rounds = [_step(1.9, 100), _step(1.1, 300), _step(1.4, 200)]
    step = _combine(rounds)
    assert step["wall"] == 1.4
    assert step["walls"] == [1.9, 1.1, 1.4]  # run order, not sorted
    assert step["maxrss_kb"] == 300


def test_even_count_takes_the_lower_middle_and_one_round_is_left_alone():
    assert _combine([_step(2.0, 1), _step(1.0, 1)])["wall"] == 1.0
    single = _combine([_step(3.0, 7)])
    assert single["wall"] == 3.0 and "walls" not in single


def test_a_failed_round_fails_the_phase():
    step = _combine([_step(1.0, 1), _step(0.5, 1, "failed")])
    assert step["status"] == "failed"


def test_table_lists_rounds_and_bytes_per_unchanged_backup():
    def tool(walls, unchanged_growth):
        phases = {"backup-unchanged": dict(_combine([_step(w, 1024) for w in walls]))}
        return {"phases": phases,
                "repo": {"after-initial": 100 << 20,
                         "after-unchanged": (100 << 20) + unchanged_growth}}
    result = {"backend": "local", "repeat": 3, "corpus_bytes": 1, "restored_bytes": 1,
              "tools": {"snap": tool([0.9, 0.8, 1.0], 3 << 20),
                        "restic": tool([2.0, 1.6, 1.8], 6 << 20)}}
    rows = {r.label: r for r in report.rows(result)}
    assert rows["unchanged re-backup time (s)"].ratio == "0.50"  # 0.9 / 1.8
    assert rows["backup-unchanged rounds, in run order (s)"].snap == "0.90 / 0.80 / 1.00"
    assert rows["bytes added per unchanged re-backup (MiB)"].snap == "1.000"
    assert rows["bytes added per unchanged re-backup (MiB)"].restic == "2.000"
