"""Benchmark runner: snap and restic side by side on the same corpus, in one run.

    python -m benchmarks.run --size 2G [--backend local|s3|both] [--smoke] [--snap-cmd "snap"]
                             [--tools snap,restic] [--cache cold|warm] [--out benchmarks/RESULTS.md]

For each backend: a fresh copy of the cached day-1 corpus, then the phases below, each run for
both tools, in alternating order (A B, B A, A B, ...) so that machine drift hits both:

    init, initial backup, unchanged re-backup, (day-2 mutation), day-2 backup,
    restore to an empty directory (verified against a hash manifest), check --read-data

Every command runs under benchmarks/measure.py, which records wall time, CPU time and the
command's own peak RSS. Exit status: 0 if every command succeeded and every restore was exact,
1 otherwise (a failing snap is reported and restic goes on), 2 if the run could not start.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import report
from .corpus import GENERATOR_VERSION, MARKER, generate, mutate, parse_size
from .manifest import compare, find_restored_root, manifest, total_bytes
from .tools import Tool, parse_json, parse_summary, restic_tool, snap_tool

MEASURE = Path(__file__).resolve().parent / "measure.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
SMOKE_SIZE = "8M"
#: environment variables that could point a tool at something other than the bench repository
SCRUB_PREFIXES = ("RESTIC_", "SNAP_", "AWS_", "XDG_CACHE_HOME")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- measuring ---------------------------------------------------------------------------------


class Measurer:
    def __init__(self, log_dir: Path, timeout: float, cache_mode: str) -> None:
        self.log_dir, self.timeout, self.cache_mode = log_dir, timeout, cache_mode

    def prepare(self, warm_paths: list[Path]) -> None:
        """Before each measured command: flush dirty pages (the previous command's writes must
        not be paid by the next one), then drop or warm the page cache."""
        os.sync()
        if self.cache_mode == "cold":
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        else:
            for root in warm_paths:
                for dirpath, _, files in os.walk(root):
                    for name in files:
                        try:
                            with open(os.path.join(dirpath, name), "rb") as f:
                                while f.read(1 << 20):
                                    pass
                        except OSError:
                            pass

    def run(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
            pss: bool = False) -> dict:
        """``pss``: also sample the memory of all the command's processes (see measure.py)."""
        base = self.log_dir / name
        rusage = base.with_suffix(".rusage.json")
        out_path, err_path = base.with_suffix(".out"), base.with_suffix(".err")
        flags = ["--pss"] if pss else []
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(MEASURE), *flags,
                                     str(rusage), *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    cwd=cwd, start_new_session=True)
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        try:
            step = json.loads(rusage.read_text())
        except (OSError, ValueError):
            step = {"rc": -9, "wall": self.timeout, "maxrss_kb": 0, "utime": 0, "stime": 0,
                    "error": f"timed out after {self.timeout:g} s"}
        step["argv"] = argv
        step["stdout"], step["stderr"] = stdout, stderr
        if step["rc"] != 0 and "error" not in step:
            tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
            step["error"] = f"exit {step['rc']}: " + (" | ".join(tail) or "(no stderr)")
        step["status"] = "ok" if step["rc"] == 0 else "failed"
        return step


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


# --- one backend -------------------------------------------------------------------------------


class BackendRun:
    def __init__(self, backend: str, tools: list[Tool], work: Path, pristine: Path,
                 measurer: Measurer, seed: int, s3=None, repeat: int = 1) -> None:
        self.backend, self.tools, self.work, self.pristine = backend, tools, work, pristine
        self.repeat = repeat
        self.m, self.seed, self.s3 = measurer, seed, s3
        self.src = work / "src"
        self.res = {"backend": backend, "repeat": repeat, "tools": {t.name: {"phases": {}, "repo": {}}
                                                  for t in tools}}
        self.order = 0

    def repo(self, tool: Tool) -> str:
        if self.backend == "s3":
            return f"s3:{self.s3.endpoint}/bench-{tool.name}/repo"
        return str(self.work / "repos" / f"{self.backend}-{tool.name}")

    def env(self, tool: Tool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES)}
        env.update(tool.env)
        env["XDG_CACHE_HOME"] = str(self.work / "cache" / f"{self.backend}-{tool.name}")
        if self.s3:
            env.update(self.s3.env)
        return env

    def repo_bytes(self, tool: Tool) -> int:
        if self.backend == "s3":
            return self.s3.bucket_usage(f"bench-{tool.name}")[0]
        return tree_bytes(Path(self.repo(tool)))

    def setup(self) -> None:
        log(f"[{self.backend}] fresh copy of the day-1 corpus -> {self.src}")
        shutil.rmtree(self.src, ignore_errors=True)
        subprocess.run(["cp", "-a", "--sparse=always", str(self.pristine), str(self.src)],
                       check=True)
        for tool in self.tools:
            for path in (Path(self.repo(tool)) if self.backend == "local" else None,
                         self.work / "cache" / f"{self.backend}-{tool.name}",
                         self.work / "restore" / tool.name):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            if self.s3:
                self.s3.create_bucket(f"bench-{tool.name}")
        (self.work / "repos").mkdir(exist_ok=True)

    def phase(self, phase: str, make_argv, warm=None, after=None, repeat: int = 1,
              before=None) -> None:
        """Runs ``phase`` for every tool still standing, ``repeat`` times, each round in the
        next A/B order; the recorded step is the round of median wall time (see _combine).
        ``before(tool, round)`` runs before each round's command, unmeasured."""
        rounds: dict[str, list[dict]] = {tool.name: [] for tool in self.tools}
        for r in range(repeat):
            tools = self.tools if self.order % 2 == 0 else list(reversed(self.tools))
            self.order += 1
            for tool in tools:
                t = self.res["tools"][tool.name]
                if t.get("failed"):
                    t["phases"].setdefault(phase, {"status": "skipped"})
                    continue
                if before:
                    before(tool, r)
                step = self._once(phase, tool, make_argv, warm, r if repeat > 1 else None)
                rounds[tool.name].append(step)
                t["phases"][phase] = _combine(rounds[tool.name])
                if step["status"] != "ok":
                    t["failed"] = f"{phase}: {step['error']}"
                    log(f"[{self.backend}] {phase:17s} {tool.name:6s} FAILED {step['error']}")
                    log(f"    command: {shlex.join(step['argv'])}")
                    log(f"    {tool.name}'s remaining phases are skipped; logs in {self.m.log_dir}")
                    continue
                log(f"[{self.backend}] {phase:17s} {tool.name:6s} {step['wall']:8.2f} s  "
                    f"peak RSS {step['maxrss_kb'] / 1024:7.1f} MiB")
                if after:
                    after(tool, t)

    def _once(self, phase: str, tool: Tool, make_argv, warm, round_: int | None) -> dict:
        self.m.prepare(warm(tool) if warm else [])
        before = self.s3.app.snapshot(f"bench-{tool.name}") if self.s3 else None
        name = f"{self.backend}-{phase}-{tool.name}" + ("" if round_ is None else f"-{round_}")
        step = self.m.run(name, make_argv(tool), self.env(tool), self.work)
        if self.s3:
            after_counts = self.s3.app.snapshot(f"bench-{tool.name}")
            after_counts.subtract(before)
            step["s3"] = {k: v for k, v in after_counts.items() if v}
        if phase.startswith("backup"):
            step["summary"] = parse_summary(step["stdout"])
        return _slim(step)

    def run(self) -> dict:
        self.setup()
        src = str(self.src)
        local = self.backend == "local"
        warm_src = lambda tool: [self.src]  # noqa: E731
        warm_repo = (lambda tool: [Path(self.repo(tool))]) if local else None  # noqa: E731

        def record(key):
            def after(tool, t):
                t["repo"][key] = self.repo_bytes(tool)
            return after

        self.phase("init", lambda tool: tool.init(self.repo(tool)))
        self.res["corpus_bytes_day1"] = tree_bytes(self.src)
        self.phase("backup-initial", lambda tool: tool.backup(self.repo(tool), src),
                   warm_src, record("after-initial"))
        self.phase("backup-unchanged", lambda tool: tool.backup(self.repo(tool), src),
                   warm_src, record("after-unchanged"), self.repeat)
        started = time.perf_counter()
        self.res["mutation"] = mutate(self.src, self.seed)
        expected = manifest(self.src)
        self.res["corpus_bytes"] = self.res["restored_bytes"] = total_bytes(expected)
        log(f"[{self.backend}] day-2 mutation and manifest: {time.perf_counter() - started:.1f} s"
            f" ({self.res['mutation']})")
        self.phase("backup-day2", lambda tool: tool.backup(self.repo(tool), src),
                   warm_src, record("after-day2"), self.repeat if local else 1,
                   self._day1_state)

        def verify(tool, t):
            target = self.work / "restore" / tool.name
            root = find_restored_root(target, self.src, MARKER)
            problems = (compare(expected, manifest(root)) if root else
                        [f"restored tree not found under {target} (no {MARKER})"])
            t["restore_ok"] = not problems
            t["restore_problems"] = problems
            if problems:
                log(f"[{self.backend}] restore           {tool.name:6s} DIFFERS from the source:")
                for line in problems:
                    log(f"    {line}")
            # Set aside, deleted after the last measured command: ext4 without a journal (this
            # VM's disk) skips inodes freed less than 60 s ago (300 s while their block is
            # dirty) when it allocates new ones; a restore right after deleting 31k files spent
            # 10-28% of its CPU there (perf: recently_deleted), paying for the round before.
            target.rename(done / f"{tool.name}-{len(list(done.iterdir()))}")

        def empty_target(tool, round_):
            target = self.work / "restore" / tool.name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)

        done = self.work / "restored"
        shutil.rmtree(done, ignore_errors=True)
        done.mkdir()
        self.phase("restore", lambda tool: tool.restore(self.repo(tool),
                                                        str(self.work / "restore" / tool.name)),
                   warm_repo, verify, self.repeat, empty_target)
        self.phase("check", lambda tool: tool.check(self.repo(tool)), warm_repo,
                   repeat=self.repeat)
        self.extras(done)
        for path in (done, self.work / "day1"):  # after the last measured command
            shutil.rmtree(path, ignore_errors=True)
        return self.res

    def _day1_state(self, tool: Tool, round_: int) -> None:
        """Day 2 in rounds (local repositories only): the repository and the cache as they
        were before the first round are saved, and put back before every later one, so each
        round backs up the same changes onto the same parent."""
        saved = self.work / "day1" / tool.name
        places = [(Path(self.repo(tool)), saved / "repo"),
                  (self.work / "cache" / f"{self.backend}-{tool.name}", saved / "cache")]
        for live, copy in places:
            if round_ == 0:
                shutil.rmtree(copy, ignore_errors=True)
                copy.parent.mkdir(parents=True, exist_ok=True)
                if live.exists():
                    subprocess.run(["cp", "-a", str(live), str(copy)], check=True)
            else:
                shutil.rmtree(live, ignore_errors=True)
                if copy.exists():
                    subprocess.run(["cp", "-a", str(copy), str(live)], check=True)

    def extras(self, restored: Path) -> None:
        """Not timed: the memory of one more restore (into ``restored``) counted over all of
        its processes, how many snapshots each tool has, and its raw-data stats if offered."""
        for tool in self.tools:
            t = self.res["tools"][tool.name]
            if t.get("failed"):
                continue
            step = self.m.run(f"{self.backend}-restore-pss-{tool.name}",
                              tool.restore(self.repo(tool), str(restored / f"{tool.name}-pss")),
                              self.env(tool), self.work, pss=True)
            if step["status"] == "ok":
                t["restore_pss_kb"] = step["peak_pss_kb"]
            step = self.m.run(f"{self.backend}-snapshots-{tool.name}",
                              tool.snapshots(self.repo(tool)), self.env(tool), self.work)
            snaps = parse_json(step["stdout"]) if step["status"] == "ok" else None
            if isinstance(snaps, list):
                t["snapshots"] = len(snaps)
            else:
                t["failed"] = f"snapshots: {step.get('error') or 'output is not a JSON list'}"
                log(f"[{self.backend}] snapshots {tool.name} FAILED {t['failed']}")
            step = self.m.run(f"{self.backend}-stats-{tool.name}", tool.stats(self.repo(tool)),
                              self.env(tool), self.work)
            stats = parse_json(step["stdout"]) if step["status"] == "ok" else None
            t["stats"] = stats if isinstance(stats, dict) else {"unavailable": step.get("error")}


def _slim(step: dict) -> dict:
    """Keeps the numbers and the ends of the outputs (full outputs stay in the log files)."""
    out = {k: v for k, v in step.items() if k not in ("stdout", "stderr")}
    out["stderr_tail"] = step["stderr"][-2000:]
    return out


def _combine(rounds: list[dict]) -> dict:
    """One phase's rounds as one step: a failed round makes the phase failed; otherwise the
    round of median wall time (the lower middle one for an even count), with every round's wall
    time in ``walls`` and the largest peak RSS of all rounds, so memory is never flattered."""
    failed = [s for s in rounds if s["status"] != "ok"]
    if failed:
        return failed[0]
    ordered = sorted(rounds, key=lambda s: s["wall"])
    step = dict(ordered[(len(ordered) - 1) // 2])
    if len(rounds) > 1:
        step["walls"] = [s["wall"] for s in rounds]
        step["maxrss_kb"] = max(s["maxrss_kb"] for s in rounds)
    return step


# --- corpus cache -------------------------------------------------------------------------------


def pristine_corpus(work: Path, size: int, seed: int, regen: bool) -> tuple[Path, dict]:
    name = f"{size}-s{seed}-v{GENERATOR_VERSION}"
    root, stamp = work / "corpus" / name, work / "corpus" / f"{name}.json"
    if stamp.exists() and root.is_dir() and not regen:
        stats = json.loads(stamp.read_text())
        log(f"corpus: cached {root} ({stats['bytes'] / (1 << 20):.0f} MiB, {stats['files']} files,"
            f" generated in {stats['seconds']} s)")
        return root, stats
    stamp.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    log(f"corpus: generating {size / (1 << 20):.0f} MiB, seed {seed} -> {root}")
    stats = generate(root, size, seed)
    stamp.write_text(json.dumps(stats))
    log(f"corpus: {stats['bytes'] / (1 << 20):.0f} MiB in {stats['files']} files, "
        f"{stats['seconds']} s")
    return root, stats


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", help="corpus size, e.g. 2G, 300M (default 2G; 8M with --smoke)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", choices=["local", "s3", "both"], default="local")
    p.add_argument("--smoke", action="store_true",
                   help="tiny corpus, warm caches, short time limits; for CI")
    p.add_argument("--snap-cmd", default="auto",
                   help='how to run snap, e.g. "snap" or "python -m cli" (default: snap on PATH, '
                        "else python -m cli from this checkout)")
    p.add_argument("--tools", default="snap,restic", help="comma-separated subset of snap,restic")
    p.add_argument("--cache", choices=["auto", "cold", "warm"], default="auto",
                   help="cold: drop the page cache before every command (root); warm: read the "
                        "command's input first; auto: cold if possible, warm with --smoke")
    p.add_argument("--work-dir", default="/tmp/snap-bench", type=Path)
    p.add_argument("--out", type=Path, help=f"results file to append to (default {DEFAULT_OUT}; "
                                            "with --smoke: none)")
    p.add_argument("--timeout", type=float, help="limit per command in seconds "
                                                 "(default 4 h; 120 s with --smoke)")
    p.add_argument("--repeat", type=int,
                   help="rounds of the unchanged re-backup, the day-2 backup (local only), the "
                        "restore and the check; the median round is reported (default 3; 1 with "
                        "--smoke)")
    p.add_argument("--regen", action="store_true", help="regenerate the cached corpus")
    p.add_argument("--no-install", action="store_true", help="never apt-get install restic")
    return p.parse_args(argv)


def choose_cache_mode(requested: str, smoke: bool) -> tuple[str, str]:
    can_drop = os.access("/proc/sys/vm/drop_caches", os.W_OK)
    if requested == "cold" and not can_drop:
        return "warm", "cold requested but /proc/sys/vm/drop_caches is not writable: warm"
    if requested == "auto":
        requested = "warm" if smoke or not can_drop else "cold"
    if requested == "cold":
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as exc:
            return "warm", f"cannot drop the page cache ({exc.strerror}): warm"
        return "cold", "cold: page cache dropped (sync; echo 3 > drop_caches) before every command"
    return "warm", "warm: each command's input was read once just before it ran"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size_label = args.size or (SMOKE_SIZE if args.smoke else "2G")
    size = parse_size(size_label)
    repeat = args.repeat or (1 if args.smoke else 3)
    if repeat < 1:
        log("error: --repeat takes a positive count")
        return 2
    timeout = args.timeout or (120.0 if args.smoke else 4 * 3600.0)
    out = args.out if args.out else (None if args.smoke else DEFAULT_OUT)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not wanted or set(wanted) - {"snap", "restic"}:
        log("error: --tools takes a comma-separated subset of snap,restic")
        return 2
    tools: list[Tool] = []
    versions = {}
    if "snap" in wanted:
        snap, versions["snap"] = snap_tool(args.snap_cmd)
        tools.append(snap)
    if "restic" in wanted:
        restic, versions["restic"] = restic_tool(install=not args.no_install)
        if restic is None:
            log(f"error: {versions['restic']}")
            return 2
        tools.append(restic)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache_mode, cache_note = choose_cache_mode(args.cache, args.smoke)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = work / "logs" / stamp
    log_dir.mkdir(parents=True)
    log(f"snap: {tools[0].description if tools[0].name == 'snap' else '-'}; "
        f"restic: {versions.get('restic', '-')}; cache: {cache_note}; logs: {log_dir}")

    # pristine corpus + working copy + two repositories (about 0.7x each) and their day-1
    # copies + every restore round of both tools (kept to the end) + slack
    need = (5 + 2 * repeat) * size
    free = shutil.disk_usage(work).free
    if free < need:
        log(f"warning: {free / (1 << 30):.1f} GiB free under {work}; this run may need about "
            f"{need / (1 << 30):.1f} GiB (use --work-dir elsewhere, or a lower --repeat)")
    pristine, corpus_stats = pristine_corpus(work, size, args.seed, args.regen)
    measurer = Measurer(log_dir, timeout, cache_mode)
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        s3 = None
        if backend == "s3":
            from .s3server import S3Server
            s3 = S3Server()
            log(f"[s3] moto server at {s3.endpoint}")
        try:
            results.append(BackendRun(backend, tools, work, pristine, measurer, args.seed,
                                      s3, repeat).run())
        finally:
            if s3:
                s3.stop()
            for tool in tools:  # local repositories can be large: keep only the logs
                shutil.rmtree(work / "repos" / f"{backend}-{tool.name}", ignore_errors=True)
    shutil.rmtree(work / "src", ignore_errors=True)

    facts = {"tools": ", ".join(t.name for t in tools) + ("" if len(tools) == 2 else
                                                          " only (--tools)"),
             **report.machine_facts(), "restic": versions.get("restic", "-"),
             "snap commit": versions.get("snap", "-"),
             "snap command": tools[0].description if tools[0].name == "snap" else "-",
             "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "corpus": f"--size {size_label} --seed {args.seed}: "
                       f"{corpus_stats['bytes'] / (1 << 20):.1f} MiB, "
                       f"{corpus_stats['files']} files (generator v{GENERATOR_VERSION}, "
                       f"{corpus_stats['seconds']} s)",
             "page cache": cache_note,
             "rounds": f"unchanged re-backup, day-2 backup (local only), restore and check: "
                       f"median of {repeat} (A/B order alternating every round); other phases: 1"
                       if repeat > 1 else "1 per phase",
             "compared": "restic --compression auto (zstd, about level 3; repository v2) vs snap's"
                         " default compression",
             "command": "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None
                                                                 else argv)}
    text = render_all(results, facts, args.smoke)
    print(text)
    (log_dir / "results.json").write_text(json.dumps({"facts": facts, "results": results},
                                                     indent=1, default=str))
    if out:
        report.append_results(out, text)
        log(f"appended to {out}")
    failures = [f"{r['backend']}: {name}: {t['failed']}" for r in results
                for name, t in r["tools"].items() if t.get("failed")]
    failures += [f"{r['backend']}: {name}: restore differs" for r in results
                 for name, t in r["tools"].items() if t.get("restore_ok") is False]
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


def render_all(results: list[dict], facts: dict, smoke: bool) -> str:
    title = "Smoke run" if smoke else "Run"
    parts = [f"## {title} {facts['date']}", ""]
    parts += [f"- {k}: {v}" for k, v in facts.items() if k != "date"]
    for res in results:
        parts += ["", f"### {res['backend']} repository", "", report.render(report.rows(res))]
        notes = [f"{name} FAILED at {t['failed']}" for name, t in res["tools"].items()
                 if t.get("failed")]
        notes += [f"{name} restore DIFFERS: " + "; ".join(t["restore_problems"])
                  for name, t in res["tools"].items() if t.get("restore_ok") is False]
        notes += [f"{name}: snapshots {t['snapshots']}" for name, t in res["tools"].items()
                  if "snapshots" in t]
        if notes:
            parts += [""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
