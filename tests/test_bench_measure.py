"""benchmarks/measure.py: the wrapper that measures each benchmarked command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MEASURE = Path(__file__).resolve().parent.parent / "benchmarks" / "measure.py"

# A parent touching 40 MiB, forking a child that shares them; then each touches 30 MiB of
# its own and holds it for a while.
FORKING = """
import os, time
shared = bytearray(40 << 20)
for i in range(0, len(shared), 4096): shared[i] = 1
pid = os.fork()
if pid == 0:
    own = bytearray(30 << 20)
    for i in range(0, len(own), 4096): own[i] = 1
    time.sleep(0.5)
    os._exit(0)
mine = bytearray(30 << 20)
for i in range(0, len(mine), 4096): mine[i] = 1
os.waitpid(pid, 0)
"""


def _measure(tmp_path, *flags: str) -> dict:
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-I", "-S", str(MEASURE), *flags, str(out),
                    sys.executable, "-c", FORKING], check=True)
    return json.loads(out.read_text())


def test_pss_sums_the_processes_of_a_command_counting_shared_pages_once(tmp_path):
    result = _measure(tmp_path, "--pss")
    assert result["rc"] == 0
    mib = result["peak_pss_kb"] / 1024
    assert 100 <= mib < 140  # 40 shared + 30 + 30 of their own, plus two interpreters
    assert result["maxrss_kb"] / 1024 < mib - 15  # the largest single process only


def test_without_pss_nothing_is_sampled(tmp_path):
    result = _measure(tmp_path)
    assert result["rc"] == 0 and "peak_pss_kb" not in result
