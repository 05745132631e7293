"""Request counts of the storage stack, for -v and --json summaries."""

from __future__ import annotations

from dedupe.backends.counting import request_counts


def request_summary(backend) -> dict[str, int]:
    return {k: v for k, v in sorted(request_counts(backend).items()) if v}
