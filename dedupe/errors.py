"""Typed errors raised by the engine.

The library never prints or exits; the CLI maps these classes to one line on stderr and an
exit code (see ``cli/errors.py`` and the README's exit code table).
"""

from __future__ import annotations


class SnapError(Exception):
    """Base class of every error the engine raises on purpose."""


# --- storage -----------------------------------------------------------------------------


class BackendError(SnapError):
    """A storage operation failed. ``name`` is the object involved, when there is one."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class NotFound(BackendError):
    """The named object does not exist."""


class AlreadyExists(BackendError):
    """``put`` was asked to create an object whose name is taken. Objects are never replaced."""


class PermissionDenied(BackendError):
    """The credentials or file permissions do not allow the operation. Not retryable."""


class TransientError(BackendError):
    """A failure that may succeed when tried again: timeouts, resets, 5xx, throttling."""


class BackendConfigError(BackendError):
    """The repository location is malformed or names something that cannot be used."""


class MissingBucket(BackendConfigError):
    """The S3 bucket of the location does not exist: there is no repository there."""


# --- repository --------------------------------------------------------------------------


class RepositoryError(SnapError):
    """The repository cannot be used as asked."""


class NoRepository(RepositoryError):
    """There is no snap repository at the location (no ``config``)."""


class RepositoryExists(RepositoryError):
    """``init`` found a repository (or other objects) at the location already."""


class WrongPassword(RepositoryError):
    """No key file of the repository opens with the given password."""


class UnsupportedVersion(RepositoryError):
    """The repository or one of its objects uses a format version this program cannot read."""


class IntegrityError(RepositoryError):
    """Stored bytes failed verification: bad hash, failed authentication or malformed data."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class LockError(RepositoryError):
    """Another process holds a conflicting lock on the repository."""


class KeyManagementError(RepositoryError):
    """A key management request cannot be done (for example: removing the last key)."""


class SnapshotNotFound(RepositoryError):
    """No snapshot matches the given id, prefix or name, or a prefix is ambiguous."""


class PathNotFound(SnapError):
    """A path asked for does not exist inside a snapshot."""


class SourceError(SnapError):
    """The data to back up cannot be used at all (not an existing path, failed command)."""


class Interrupted(SnapError):
    """The operation was cancelled (Ctrl-C, SIGTERM) before it finished."""


class MountError(SnapError):
    """A repository cannot be mounted (libfuse missing, the mount itself refused)."""
