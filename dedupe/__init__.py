"""snap's engine: a deduplicating, encrypted, content-addressed backup library.

No printing, no argv, no exits: progress is reported through callbacks and failures are the
typed exceptions of ``dedupe.errors``.
"""

__version__ = "0.1.0"
