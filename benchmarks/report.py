"""Turns the runner's raw results into the snap-vs-restic table and the RESULTS.md entry.

Ratios are always snap / restic of the measure named in the row: for throughput rows a ratio
above 1 means snap is faster, for time, byte and memory rows a ratio below 1 means snap is
better. Targets are the ones of issue 8.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
TOOLS = ("snap", "restic")

# (key, label, op, bound); keys are computed by ``_values``
TARGETS = [
    ("tput-backup-initial", "initial backup throughput (MiB/s)", ">=", 2.0),
    ("time-backup-unchanged", "unchanged re-backup time (s)", "<=", 0.5),
    ("time-backup-day2", "day-2 backup time (s)", "<=", 0.7),
    ("bytes-day2-added", "day-2 bytes added to the repository (MiB)", "<=", 1.0),
    ("tput-restore", "restore throughput (MiB/s)", ">=", 1.5),
    ("tput-check", "check --read-data throughput (MiB/s)", ">=", 1.5),
    ("rss-backup", "peak RSS of the backups (MiB)", "<=", 1.0),
    ("rss-restore", "peak RSS of the restore (MiB)", "<=", 1.0),
    ("bytes-repo", "repository size after day 2 (MiB)", "<=", 1.0),
]
INFO = [
    ("time-init", "init time (s)"),
    ("time-backup-initial", "initial backup time (s)"),
    ("cpu-backup-initial", "initial backup CPU user+sys (s)"),
    ("bytes-repo-initial", "repository size after initial backup (MiB)"),
    ("bytes-unchanged-added", "bytes added per unchanged re-backup (MiB)"),
    ("files-day2", "day-2 files new / changed / unmodified"),
    ("time-restore", "restore time (s)"),
    ("time-check", "check --read-data time (s)"),
    ("rss-check", "peak RSS of check --read-data (MiB)"),
    ("pss-restore", "peak memory of a restore, all processes (PSS sum, MiB; extra run)"),
]
PHASES = ("init", "backup-initial", "backup-unchanged", "backup-day2", "restore", "check")


@dataclass
class Row:
    label: str
    snap: str
    restic: str
    ratio: str
    target: str
    met: str


def _values(tool: dict, corpus_bytes: int, restored_bytes: int,
            rounds: int = 1) -> dict[str, float | str]:
    """Numbers of one tool, keyed like TARGETS/INFO; a key is absent when not measured.
    ``rounds`` is how many unchanged re-backups ran (their growth is reported per backup)."""
    phases = tool.get("phases", {})
    ok = {p: s for p, s in phases.items() if s.get("status") == "ok"}
    repo = tool.get("repo", {})
    v: dict[str, float | str] = {}
    for phase, step in ok.items():
        v[f"time-{phase}"] = step["wall"]
    if "backup-initial" in ok:
        v["tput-backup-initial"] = corpus_bytes / MiB / max(ok["backup-initial"]["wall"], 1e-9)
        step = ok["backup-initial"]
        v["cpu-backup-initial"] = step["utime"] + step["stime"]
    if "restore" in ok and tool.get("restore_ok"):
        v["tput-restore"] = restored_bytes / MiB / max(ok["restore"]["wall"], 1e-9)
    if "check" in ok:
        v["tput-check"] = restored_bytes / MiB / max(ok["check"]["wall"], 1e-9)
    backups = [ok[p]["maxrss_kb"] for p in PHASES if p.startswith("backup") and p in ok]
    if len(backups) == 3:
        v["rss-backup"] = max(backups) / 1024
    if "restore" in ok:
        v["rss-restore"] = ok["restore"]["maxrss_kb"] / 1024
    if "check" in ok:
        v["rss-check"] = ok["check"]["maxrss_kb"] / 1024
    if tool.get("restore_pss_kb"):
        v["pss-restore"] = tool["restore_pss_kb"] / 1024
    if {"after-initial", "after-unchanged"} <= repo.keys():
        v["bytes-repo-initial"] = repo["after-initial"] / MiB
        v["bytes-unchanged-added"] = ((repo["after-unchanged"] - repo["after-initial"]) / MiB
                                      / rounds)
    if {"after-unchanged", "after-day2"} <= repo.keys():
        v["bytes-day2-added"] = (repo["after-day2"] - repo["after-unchanged"]) / MiB
        v["bytes-repo"] = repo["after-day2"] / MiB
    summary = ok.get("backup-day2", {}).get("summary") or {}
    if summary:
        v["files-day2"] = " / ".join(str(summary.get(k, "?")) for k in
                                     ("files_new", "files_changed", "files_unmodified"))
    return v


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _why_missing(tool: dict) -> str:
    """Short cell text; the full reason is listed under the table."""
    if not tool:
        return "not run"
    if tool.get("failed"):
        return "failed"
    if tool.get("restore_ok") is False:
        return "restore differs"
    return "n/a"


def rows(result: dict) -> list[Row]:
    tools = result["tools"]
    vals = {t: _values(tools.get(t, {}), result["corpus_bytes"], result["restored_bytes"],
                       result.get("repeat", 1))
            for t in TOOLS}
    out = []
    for key, label, op, bound in TARGETS:
        s, r = vals["snap"].get(key), vals["restic"].get(key)
        ratio = met = ""
        if isinstance(s, float) and isinstance(r, float):
            if r > 0:
                ratio = f"{s / r:.2f}"
                good = s / r >= bound if op == ">=" else s / r <= bound
            else:  # restic added nothing: snap meets "no more than restic" only at zero
                ratio = "-" if s == 0 else "inf"
                good = s <= r if op == "<=" else False
            met = "yes" if good else "**no**"
        else:
            met = "n/a"
        out.append(Row(label, _fmt(s) if s is not None else _why_missing(tools.get("snap", {})),
                       _fmt(r) if r is not None else _why_missing(tools.get("restic", {})),
                       ratio, f"{op} {bound:.2f}", met))
    for key, label in INFO:
        s, r = vals["snap"].get(key), vals["restic"].get(key)
        ratio = f"{s / r:.2f}" if isinstance(s, float) and isinstance(r, float) and r else ""
        out.append(Row(label, _fmt(s), _fmt(r), ratio, "", ""))
    for phase in PHASES:
        cells = [tools.get(t, {}).get("phases", {}).get(phase, {}).get("walls") for t in TOOLS]
        if any(cells):
            out.append(Row(f"{phase} rounds, in run order (s)",
                           *(" / ".join(f"{w:.2f}" for w in c) if c else "" for c in cells),
                           "", "", ""))
    if result.get("backend") == "s3":
        for phase in PHASES:
            cells = []
            for t in TOOLS:
                c = tools.get(t, {}).get("phases", {}).get(phase, {}).get("s3")
                cells.append(_fmt_s3(c) if c else "")
            out.append(Row(f"S3 requests, {phase}", cells[0], cells[1], "", "", ""))
    return out


def _fmt_s3(c: dict) -> str:
    ops = ", ".join(f"{k} {v}" for k, v in sorted(c.items())
                    if k not in ("requests", "bytes_in", "bytes_out") and v)
    return (f"{c.get('requests', 0)} ({ops}); up {c.get('bytes_in', 0) / MiB:.1f} MiB, "
            f"down {c.get('bytes_out', 0) / MiB:.1f} MiB")


def render(rows_: list[Row]) -> str:
    lines = ["| measure | snap | restic | snap/restic | target | met |",
             "|---|---:|---:|---:|---|---|"]
    lines += [f"| {r.label} | {r.snap} | {r.restic} | {r.ratio} | {r.target} | {r.met} |"
              for r in rows_]
    return "\n".join(lines)


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "ram": ram,
            "kernel": platform.release(), "python": sys.version.split()[0]}


RESULTS_HEADER = """# Benchmark results: snap vs restic

Each section below was appended by one run of the benchmark runner (newest last). Reproduce with

    python -m benchmarks.run --size 2G --backend both

from the repository root (see `benchmarks/README.md` for what each number means and the
caveats). Ratios are snap/restic of the row's measure; targets are those of issue 8.
"""


def append_results(path: Path, text: str) -> None:
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(RESULTS_HEADER)
        f.write("\n" + text.rstrip() + "\n")
