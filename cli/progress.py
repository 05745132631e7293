"""Live progress for long commands: a rich display on terminals, JSON lines with --json.

The engine only updates plain counters; a daemon thread here samples them a few times a
second, so progress costs the hot path nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .sizes import format_size


def _eta(done: float, total: float, elapsed: float) -> str:
    if not total or done <= 0 or done >= total:
        return ""
    left = elapsed * (total - done) / done
    return f" ETA {int(left // 60)}:{int(left % 60):02d}"


class Ticker:
    """Calls ``render`` periodically in a daemon thread until stopped."""

    def __init__(self, render: Callable[[bool], None], interval: float) -> None:
        self._render, self._interval = render, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._render(False)

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._render(True)


def backup_line(p) -> str:
    """``p``: a BackupProgress; its totals are shown once they are all counted."""
    elapsed = max(time.monotonic() - p.started, 1e-6)
    rate = p.bytes_done / elapsed
    done = p.totals_done
    files = f"{p.files_done}" + (f"/{p.total_files}" if done else "")
    size = format_size(p.bytes_done) + (f" / {format_size(p.total_bytes)}" if done else "")
    eta = _eta(p.bytes_done, p.total_bytes, elapsed) if done else ""
    errors = f", {p.errors} errors" if p.errors else ""
    return f"[{int(elapsed // 60)}:{int(elapsed % 60):02d}] {files} files, {size}, " \
           f"{format_size(rate)}/s{eta}{errors}  {p.current[-60:]}"


class LiveLine:
    """A single refreshing status line on stderr."""

    def __init__(self, console) -> None:
        from rich.live import Live  # only on terminals: not worth importing otherwise
        from rich.text import Text

        self._text = Text
        self._live = Live(Text(""), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> "LiveLine":
        self._live.__enter__()
        return self

    def update(self, line: str) -> None:
        self._live.update(self._text(line, overflow="ellipsis", no_wrap=True))

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
