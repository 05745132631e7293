"""Runs one command and writes its wall time, exit code and rusage (peak RSS) as JSON.

    python -I -S benchmarks/measure.py [--pss] RESULT.json COMMAND [ARG...]

Why a separate small process: Linux carries a process's peak RSS across fork and exec, so a
command started directly by the runner (which holds the corpus manifest, numpy and, for S3 runs,
moto's in-memory buckets) would report the runner's own peak as its "maxrss". This wrapper
starts small (about 10 MB, which is therefore the floor of every measurement) and is the parent
of the measured command, so ``wait4`` returns the command's own peak RSS: the largest single
process of the command and of any children it waited for (not their sum).

With ``--pss`` it also samples, every 10 ms, the proportional set size (PSS) of the command
and all its descendants, and records the largest sum seen (``peak_pss_kb``): the memory of a
command that works in several processes (snap's restore writes small files in a child), each
shared page counted once. Sampling costs a little CPU and can miss a peak shorter than the
interval, so the runner uses it on an extra, untimed run only.

stdin, stdout and stderr are inherited. The runner enforces time limits by killing the process
group, so this file stays minimal and imports nothing from the project.
"""

import json
import os
import subprocess
import sys
import threading
import time


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux: /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass  # ended meanwhile
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _sample_pss(pid: int, done: threading.Event, peak: list) -> None:
    while not done.wait(0.01):
        peak[0] = max(peak[0], sum(_pss_kb(p) for p in _tree(pid)))


def main() -> int:
    pss = sys.argv[1] == "--pss"
    out_path, argv = sys.argv[1 + pss], sys.argv[2 + pss:]
    result = {"argv": argv}
    started = time.perf_counter()
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        result.update(rc=127, error=f"cannot start {argv[0]!r}: {exc.strerror}", wall=0.0,
                      maxrss_kb=0, utime=0.0, stime=0.0)
    else:
        if pss:
            done, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_sample_pss, args=(child.pid, done, peak))
            sampler.start()
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
            done.set()
            sampler.join()
            result["peak_pss_kb"] = peak[0]
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        result.update(rc=child.returncode, wall=time.perf_counter() - started,
                      maxrss_kb=usage.ru_maxrss, utime=usage.ru_utime, stime=usage.ru_stime)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
