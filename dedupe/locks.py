"""Locks and delete markers: how backups and prune share a repository without waiting.

Objects in ``locks/`` are sealed msgpack maps (associated data ``snap lock v1``) of three kinds:

- ``shared``: held by a backup (or check) while it runs. Taken at start, refreshed every
  ``REFRESH_EVERY`` by writing a new object and deleting the old (objects are immutable), and
  deleted at the end. ``created`` is the time of the first acquisition and survives refreshes.
- ``exclusive``: held by prune only while it deletes at once (the fast path when no other
  client is active). Shared lockers wait for it to go away; it is short-lived.
- ``delete-marker``: written by prune when other clients are active: "these packs are unused
  as of ``created``". Backups never dedupe against marked packs. A later prune deletes the
  marked packs that are still unused once no lock older than the marker remains (every backup
  that might have reused them has finished and its snapshot is visible), then drops the marker.

A lock is stale when it was not refreshed for ``STALE_AFTER``, or immediately when its holder
ran on this host and its process is gone. ``snap unlock`` removes stale locks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

import msgpack

from .crypto import storage_id
from .errors import IntegrityError, LockError, NotFound, SnapError

AAD_LOCK = b"snap lock v1"
REFRESH_EVERY = timedelta(minutes=5)
STALE_AFTER = timedelta(minutes=30)
SHARED, EXCLUSIVE, MARKER = "shared", "exclusive", "delete-marker"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class LockInfo:
    id: str
    kind: str
    hostname: str
    pid: int
    username: str
    created: datetime
    time: datetime  # last refresh
    command: str = ""
    packs: list[bytes] = field(default_factory=list)  # delete-marker: pack ids

    def body(self) -> dict:
        return {"kind": self.kind, "hostname": self.hostname, "pid": self.pid,
                "username": self.username, "created": self.created.isoformat(),
                "time": self.time.isoformat(), "command": self.command, "packs": self.packs}

    def stale(self, now: datetime | None = None) -> bool:
        if self.kind == MARKER:
            return False
        if self.hostname == socket.gethostname() and self.pid and not _pid_alive(self.pid):
            return True
        return (now or _now()) - self.time > STALE_AFTER

    def describe(self) -> str:
        return (f"{self.kind} lock {self.id[:8]} by {self.command or 'snap'} (pid {self.pid}) "
                f"on {self.hostname}, since {self.created.astimezone():%Y-%m-%d %H:%M:%S}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_lock(repo, info: LockInfo) -> str:
    raw = repo.key.seal(msgpack.packb(info.body()), AAD_LOCK)
    info.id = storage_id(raw)
    repo.backend.put(f"locks/{info.id}", raw)
    return info.id


def list_locks(repo, skip: str = "") -> list[LockInfo]:
    """Every lock and marker but the one named ``skip`` (ours: not read back, one request
    less per locking command); unreadable objects are skipped (they may be mid-deletion)."""
    out = []
    for obj in repo.backend.list("locks"):
        lid = obj.name.split("/", 1)[1]
        if lid == skip:
            continue
        try:
            d = msgpack.unpackb(repo.key.open(repo.backend.get(obj.name), AAD_LOCK, obj.name))
            out.append(LockInfo(lid, d["kind"], d["hostname"], d["pid"], d.get("username", ""),
                                datetime.fromisoformat(d["created"]),
                                datetime.fromisoformat(d["time"]), d.get("command", ""),
                                list(d.get("packs", []))))
        except NotFound:
            continue
        except (IntegrityError, KeyError, TypeError, ValueError):
            continue
    return out


def remove_lock(repo, lock_id: str) -> None:
    try:
        repo.backend.delete(f"locks/{lock_id}")
    except NotFound:
        pass


def new_info(kind: str, command: str, packs: Iterable[bytes] = ()) -> LockInfo:
    import getpass

    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    now = _now()
    return LockInfo("", kind, socket.gethostname(), os.getpid(), user, now, now, command,
                    list(packs))


class Lock:
    """A held shared or exclusive lock, refreshed by a daemon thread until released."""

    def __init__(self, repo, kind: str, command: str) -> None:
        self.repo = repo
        self.info = new_info(kind, command)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.lost = False
        self._leftover: list[str] = []  # our replaced lock objects a delete failed to remove

    # -- acquisition
    def acquire_shared(self, wait: float = 600.0, poll: float = 2.0) -> list[LockInfo]:
        """Take a shared lock, waiting up to ``wait`` seconds for an exclusive one to end.

        Returns the delete markers seen, so the caller can avoid their packs.
        """
        deadline = time.monotonic() + wait
        while True:
            others = self._write_and_list()
            blocking = [lk for lk in others if lk.kind == EXCLUSIVE and not lk.stale()]
            if not blocking:
                self._start_refresh()
                return [lk for lk in others if lk.kind == MARKER]
            remove_lock(self.repo, self.info.id)
            if time.monotonic() >= deadline:
                raise LockError(f"repository is locked: {blocking[0].describe()}; if no such "
                                "process runs any more, remove it with 'snap unlock'")
            time.sleep(poll)

    def try_exclusive(self) -> list[LockInfo] | None:
        """Take the exclusive lock if no other live lock exists; else None (and no lock).

        Write-then-list on both sides means a racing shared locker and this call cannot both
        proceed: at least one of them sees the other's lock and backs off.
        """
        others = self._write_and_list()
        if any(lk.kind != MARKER and not lk.stale() for lk in others):
            remove_lock(self.repo, self.info.id)
            return None
        self._start_refresh()
        return others

    def _write_and_list(self) -> list[LockInfo]:
        """Write our lock, then list the others; on any failure our lock is removed again
        (else it would block prunes until it goes stale)."""
        write_lock(self.repo, self.info)
        try:
            return list_locks(self.repo, skip=self.info.id)
        except BaseException:
            with contextlib.suppress(Exception):
                remove_lock(self.repo, self.info.id)
            raise

    # -- refresh / release
    def _start_refresh(self) -> None:
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name="snap-lock-refresh")
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY.total_seconds()):
            self.refresh()

    def refresh(self) -> None:
        with self._mutex:
            old, old_time = self.info.id, self.info.time
            self.info.time = _now()
            try:
                write_lock(self.repo, self.info)
            except Exception:
                # Not written: the old object is still the one to remove on release.
                self.info.id, self.info.time = old, old_time
                self.lost = True
                return
            # The new object is written and valid. An old one whose delete fails only
            # lingers until it goes stale (then everyone ignores it); deleting it is tried
            # again at each refresh and at release.
            self._leftover.append(old)
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        for old in list(self._leftover):
            try:
                remove_lock(self.repo, old)
            except Exception:
                continue
            self._leftover.remove(old)

    def check(self) -> None:
        """Raise unless our lock stayed valid: never stale (a suspended machine can miss
        refreshes, and prune may then have ignored us) and not removed by 'snap unlock'."""
        if self.lost or _now() - self.info.time > STALE_AFTER:
            raise LockError("our repository lock went stale while we ran; not writing the "
                            "snapshot (run the backup again)")
        try:
            self.repo.backend.stat(f"locks/{self.info.id}")
        except NotFound:
            raise LockError("our repository lock was removed by another process; "
                            "not writing the snapshot") from None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            self._remove_leftovers()
            if self.info.id:
                try:
                    remove_lock(self.repo, self.info.id)
                except SnapError:
                    # Best effort: release runs in ``finally`` blocks, where raising would hide
                    # the error that matters; a lock left behind goes stale and is ignored.
                    pass

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_marker(repo, packs: Iterable[bytes], command: str = "prune") -> LockInfo:
    info = new_info(MARKER, command, sorted(packs))
    write_lock(repo, info)
    return info


def remove_stale_locks(repo, remove_all: bool = False) -> list[LockInfo]:
    """Delete stale locks (or every lock with ``remove_all``); markers are never removed."""
    removed = []
    for lk in list_locks(repo):
        if lk.kind != MARKER and (remove_all or lk.stale()):
            remove_lock(repo, lk.id)
            removed.append(lk)
    return removed
