"""Benchmarks of ``snap mount`` (issue 7): numbers, not pass/fail tests.

    python -m benchmarks.mount_bench [--entries 10000] [--file-mb 1024] [--snapshots 1000]
                                     [--workdir DIR] [--json OUT.json]

Builds a local repository (default chunking) holding one snapshot of
    many/      ``--entries`` small files with distinct contents
    big.bin    ``--file-mb`` MiB of incompressible data
plus ``--snapshots`` - 1 more snapshots of the same tree (their manifests only), then mounts it
with ``python -m cli mount`` in a subprocess and measures:

- mount startup: from starting the process to the mount being usable (index and snapshot list
  loaded), with ``--snapshots`` snapshots;
- time to first byte: open + read(1) of big.bin inside one snapshot directory never visited
  before (cold trees, cold blob cache, cold kernel cache);
- ``ls -l`` of many/ (``--entries`` entries), cold (first listing) and warm;
- sequential read of big.bin with 1 MiB reads (cold kernel page cache: first read).

Targets (issue 7): ls -l of 10,000 entries <= 0.5 s; sequential read >= 200 MB/s from a local
repository; first byte in a 1,000-snapshot repository <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dedupe.archiver import Archiver  # noqa: E402
from dedupe.backends.local import LocalBackend  # noqa: E402
from dedupe.crypto import KdfParams  # noqa: E402
from dedupe.fusemount import is_mounted, lazy_unmount  # noqa: E402
from dedupe.repository import Repository  # noqa: E402

PASSWORD = "mount-bench"  # a throw-away repository in a scratch directory


def build(work: Path, entries: int, file_mb: int, snapshots: int) -> tuple[Path, str]:
    src = work / "src"
    many = src / "many"
    many.mkdir(parents=True)
    for i in range(entries):
        (many / f"file-{i:06d}.txt").write_bytes(f"small file number {i}\n".encode())
    with open(src / "big.bin", "wb") as f:
        for _ in range(file_mb):
            f.write(os.urandom(1 << 20))
    repo_dir = work / "repo"
    repo = Repository.init(LocalBackend(str(repo_dir)), PASSWORD.encode(), kdf=KdfParams(1, 8 << 20),
                           cache_root=str(work / "cache"))
    t0 = time.perf_counter()
    first = Archiver(repo).backup([str(src)]).snapshot
    print(f"backup of {file_mb} MiB + {entries} files: {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    for i in range(1, snapshots):
        repo.save_snapshot(replace(first, id="", time=first.time - timedelta(hours=i),
                                   parent=None))
    (src / "big.bin").unlink()  # the comparison copy is not needed; free the space
    return repo_dir, str(src)


def wait_mounted(mnt: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            raise SystemExit(f"snap mount exited with {proc.returncode}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise SystemExit("mount did not come up")
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed_ls(directory: Path, server_pid: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of ls and the server, lines) of ``ls -l directory``."""
    before = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    child = subprocess.Popen(["ls", "-l", str(directory)], stdout=subprocess.PIPE)
    data = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        raise SystemExit("ls -l failed")
    cpu = usage.ru_utime + usage.ru_stime + cpu_seconds(server_pid) - before
    return wall, cpu, data.count(b"\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--file-mb", type=int, default=1024)
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--workdir")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="snap-mount-bench-", dir=args.workdir))
    mnt = work / "mnt"
    mnt.mkdir()
    results: dict = {"entries": args.entries, "file_mb": args.file_mb,
                     "snapshots": args.snapshots}
    proc = None
    try:
        repo_dir, src = build(work, args.entries, args.file_mb, args.snapshots)
        env = dict(os.environ, SNAP_PASSWORD=PASSWORD, SNAP_CACHE_DIR=str(work / "cache"),
                   PYTHONPATH=str(REPO_ROOT))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cli", "-r", str(repo_dir), "mount",
                                 str(mnt)], env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_mounted(mnt, proc)
        results["mount_startup_s"] = time.perf_counter() - t0

        names = sorted(n for n in os.listdir(mnt / "snapshots") if n != "latest")
        inner = src.lstrip("/")
        # A snapshot in the middle, never visited: its trees are not cached yet.
        snap_dir = mnt / "snapshots" / names[len(names) // 2]
        t0 = time.perf_counter()
        with open(snap_dir / inner / "big.bin", "rb") as f:
            f.read(1)
        results["first_byte_s"] = time.perf_counter() - t0

        many = mnt / "snapshots" / names[0] / inner / "many"
        walls, cpus = [], []
        for _ in range(4):  # the first is cold (tree not loaded); the best of the rest is warm
            wall, cpu, lines = timed_ls(many, proc.pid)
            walls.append(wall)
            cpus.append(cpu)
        results["ls_l_cold_s"] = walls[0]
        results["ls_l_warm_s"] = min(walls[1:])
        # CPU seconds of ls plus the mount process: what the wall time would be on an idle
        # machine (the two take turns; on a shared, loaded machine the wall time is longer).
        results["ls_l_cold_cpu_s"] = cpus[0]
        results["ls_l_warm_cpu_s"] = min(cpus[1:])
        results["ls_l_lines"] = lines

        big = mnt / "snapshots" / names[-1] / inner / "big.bin"
        buf = bytearray(1 << 20)
        total = 0
        t0 = time.perf_counter()
        with open(big, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
        elapsed = time.perf_counter() - t0
        results["seq_read_bytes"] = total
        results["seq_read_s"] = elapsed
        results["seq_read_mb_s"] = total / elapsed / 1e6
        results["load_average_1m"] = os.getloadavg()[0]  # the machine is shared: context
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if is_mounted(str(mnt)):
            lazy_unmount(str(mnt))
        shutil.rmtree(work, ignore_errors=True)

    for k, v in results.items():
        print(f"{k:18} {v:.3f}" if isinstance(v, float) else f"{k:18} {v}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
