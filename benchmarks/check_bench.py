"""`snap check --read-data` against `restic check --read-data` on the same corpus.

    python -m benchmarks.check_bench --size 300M               # generate or reuse the corpus
    python -m benchmarks.check_bench --corpus DIR --repeat 5   # any directory as the corpus

Both tools back the corpus up once into repositories under ``--work`` (kept for reuse: delete
the directory, or pass ``--fresh``, to start over), then each runs ``check --read-data``
``--repeat`` times, alternating which goes first, each run with a fresh, empty cache (restic's
check uses a temporary cache anyway). Reported per tool: median wall time, median CPU time
(user + sys of the process and its children), and the repository bytes verified per second.

Numbers from a shared machine are noisy; the CPU time is the steadier figure there. Nothing
here asserts anything; the full harness is ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .tools import Tool, restic_tool, snap_tool

MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1:] in units else int(t)


def corpus_dir(work: Path, size: int, seed: int) -> Path:
    from . import corpus  # the harness owns the generator; we only call it

    root = work / f"corpus-{size}-s{seed}"
    if not (root / corpus.MARKER).exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating a {size // MIB} MiB corpus in {root}", file=sys.stderr)
        corpus.generate(root, size, seed)
    return root


def run(tool: Tool, argv: list[str], cache: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the children, process)."""
    env = {**os.environ, **tool.env, "XDG_CACHE_HOME": cache, "SNAP_CACHE_DIR": cache}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def repo_bytes(repo: Path) -> int:
    return sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())


def prepare(tool: Tool, repo: Path, source: Path, fresh: bool) -> None:
    if fresh:
        shutil.rmtree(repo, ignore_errors=True)
    if (repo / "config").exists():
        return
    with tempfile.TemporaryDirectory() as cache:
        for argv in (tool.init(str(repo)), tool.backup(str(repo), str(source))):
            wall, _, proc = run(tool, argv, cache)
            if proc.returncode != 0:
                sys.exit(f"{tool.name}: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        print(f"{tool.name}: backed up {source} in {wall:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="directory to back up (default: generate --size)")
    ap.add_argument("--size", default="300M", help="generated corpus size (default 300M)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/snap-check-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="re-create both repositories")
    ap.add_argument("--snap-cmd", default=f"{sys.executable} -m cli")
    ap.add_argument("--json", dest="json_out", help="also write raw numbers to this file")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.corpus) if args.corpus else corpus_dir(work, parse_size(args.size), args.seed)
    restic, note = restic_tool(install=False)
    if restic is None:
        print(note, file=sys.stderr)
        return 2
    snap, _ = snap_tool(args.snap_cmd)
    tools = [snap, restic]
    repos = {t.name: work / f"repo-{t.name}" for t in tools}
    for t in tools:
        prepare(t, repos[t.name], source, args.fresh)
    results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in tools}
    for i in range(args.repeat):
        for t in (tools if i % 2 == 0 else tools[::-1]):
            with tempfile.TemporaryDirectory() as cache:
                wall, cpu, proc = run(t, t.check(str(repos[t.name])), cache)
            if proc.returncode != 0:
                sys.exit(f"{t.name} check failed:\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}")
            results[t.name].append((wall, cpu))
            print(f"run {i + 1}: {t.name} {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)
    rows = {}
    for t in tools:
        size = repo_bytes(repos[t.name])
        wall = statistics.median(w for w, _ in results[t.name])
        cpu = statistics.median(c for _, c in results[t.name])
        rows[t.name] = {"repo_bytes": size, "wall": wall, "cpu": cpu,
                        "mib_per_s": size / MIB / wall, "runs": results[t.name]}
    print(f"\ncheck --read-data, {source} ({args.repeat} runs, medians)\n")
    print("| tool | repository | wall | CPU | verified |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['repo_bytes'] / MIB:.0f} MiB | {r['wall']:.2f} s | {r['cpu']:.2f} s "
              f"| {r['mib_per_s']:.0f} MiB/s |")
    s, r = rows["snap"], rows["restic"]
    print(f"\nsnap vs restic: {r['wall'] / s['wall']:.2f}x by wall time, "
          f"{r['cpu'] / s['cpu']:.2f}x by CPU time, {s['mib_per_s'] / r['mib_per_s']:.2f}x by "
          "bytes verified per second")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"corpus": str(source), "results": rows},
                                                  indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
