"""Starting and ending the helper processes of a backup (statahead.py, prefetch.py).

Each helper is a module of ours run as a script with ``python -I -S``: the standard library
only, ~15 ms to start. It gets its work on its stdin, and the end of that stdin tells it snap
is gone, however snap ends. It runs in its own session, so a Ctrl-C meant for snap does not
print a traceback from it. If it cannot start, the caller goes on without it.
"""

from __future__ import annotations

import os
import subprocess
import sys


def spawn(script: str, args: list, *, stdout: bool = False) -> subprocess.Popen | None:
    """Run ``script`` (a path) with ``args``; its stdin is a pipe, its stdout too if asked
    for. None if it cannot be started."""
    if not sys.executable:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(script), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except (OSError, ValueError):
        return None


def end(proc: subprocess.Popen) -> None:
    """Kill the helper unless it has finished, reap it and close its stdin."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
