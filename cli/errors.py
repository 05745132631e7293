"""Exit codes (the same as restic's) and the mapping from engine errors to them."""

from __future__ import annotations

from dedupe import errors as e

EXIT_OK = 0
EXIT_ERROR = 1  # any failure, bad flags included
EXIT_INCOMPLETE = 3  # backup finished, but some files could not be read
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_INTERRUPTED = 130


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (e.NoRepository, e.MissingBucket)):
        return EXIT_NO_REPOSITORY
    if isinstance(exc, e.WrongPassword):
        return EXIT_WRONG_PASSWORD
    if isinstance(exc, e.LockError):
        return EXIT_LOCKED
    if isinstance(exc, (e.Interrupted, KeyboardInterrupt)):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def describe(exc: BaseException) -> str:
    """One line for stderr: the error's own message, never a traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, e.NotFound) and exc.name == "config":
        return f"no repository found ({msg})"
    return msg
