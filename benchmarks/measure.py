"""Runs one command and writes its wall time, exit code and rusage (peak RSS) as JSON.

    python -I -S benchmarks/measure.py RESULT.json COMMAND [ARG...]

Why a separate small process: Linux carries a process's peak RSS across fork and exec, so a
command started directly by the runner (which holds the corpus manifest, numpy and, for S3 runs,
moto's in-memory buckets) would report the runner's own peak as its "maxrss". This wrapper
starts small (about 10 MB, which is therefore the floor of every measurement) and is the parent
of the measured command, so ``wait4`` returns the command's own peak RSS: the largest single
process of the command and of any children it waited for (not their sum).

stdin, stdout and stderr are inherited. The runner enforces time limits by killing the process
group, so this file stays minimal and imports nothing from the project.
"""

import json
import os
import subprocess
import sys
import time


def main() -> int:
    out_path, argv = sys.argv[1], sys.argv[2:]
    result = {"argv": argv}
    started = time.perf_counter()
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        result.update(rc=127, error=f"cannot start {argv[0]!r}: {exc.strerror}", wall=0.0,
                      maxrss_kb=0, utime=0.0, stime=0.0)
    else:
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        result.update(rc=child.returncode, wall=time.perf_counter() - started,
                      maxrss_kb=usage.ru_maxrss, utime=usage.ru_utime, stime=usage.ru_stime)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
