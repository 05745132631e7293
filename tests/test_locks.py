"""Locks: a storage failure while taking or refreshing a lock leaves no lock object behind.

The repository is a real local directory; the wrapper only makes chosen calls fail, as a
broken connection would (after the retry wrapper gave up).
"""

from __future__ import annotations

import pytest

from dedupe.backends import LocalBackend
from dedupe.backends.base import BackendWrapper
from dedupe.crypto import KdfParams
from dedupe.errors import BackendError
from dedupe.locks import SHARED, Lock
from dedupe.repository import Repository


class FailingCalls(BackendWrapper):
    """Raises BackendError for the next put, list or delete on ``locks/`` once armed; every other
    call reaches the directory (BackendWrapper delegates)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.fail: set[str] = set()

    def _maybe_fail(self, op: str, name: str) -> None:
        if op in self.fail and name.startswith("locks"):
            self.fail.discard(op)
            raise BackendError(f"{op} {name}: connection reset")

    def put(self, name, data, bulk=False):
        self._maybe_fail("put", name)
        return self.inner.put(name, data, bulk)

    def list(self, namespace):
        self._maybe_fail("list", namespace)
        return self.inner.list(namespace)

    def delete(self, name):
        self._maybe_fail("delete", name)
        return self.inner.delete(name)


@pytest.fixture
def repo(tmp_path):
    Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                    cache_root=str(tmp_path / "cache")).close()
    return Repository.open(FailingCalls(LocalBackend(str(tmp_path / "repo"))), b"pw",
                           no_cache=True)


def lock_objects(repo) -> list[str]:
    return [o.name for o in repo.backend.inner.list("locks")]


def test_failed_refresh_keeps_the_lock_release_removes(repo):
    lock = Lock(repo, SHARED, "backup")
    lock.acquire_shared()
    held = lock_objects(repo)
    repo.backend.fail.add("put")
    lock.refresh()
    assert lock.lost
    assert lock_objects(repo) == held  # the old lock is still there, and still ours
    lock.release()
    assert lock_objects(repo) == []


def test_refresh_whose_old_object_cannot_be_deleted_keeps_a_valid_lock(repo):
    """The new lock object is written: the lock is not lost (a backup must not fail over
    it). The old object is removed at the next refresh, and everything at release."""
    lock = Lock(repo, SHARED, "backup")
    lock.acquire_shared()
    first = lock_objects(repo)
    repo.backend.fail.add("delete")
    lock.refresh()
    assert not lock.lost
    lock.check()
    assert len(lock_objects(repo)) == 2 and set(first) < set(lock_objects(repo))
    lock.refresh()  # deletes the leftover, and replaces the current object
    assert len(lock_objects(repo)) == 1 and not set(first) & set(lock_objects(repo))
    repo.backend.fail.add("delete")
    lock.refresh()  # a leftover again ...
    assert len(lock_objects(repo)) == 2
    lock.release()  # ... gone with the lock
    assert lock_objects(repo) == []


def test_failure_after_writing_the_lock_removes_it(repo):
    lock = Lock(repo, SHARED, "backup")
    repo.backend.fail.add("list")  # the lock is written, listing the others fails
    with pytest.raises(BackendError):
        lock.acquire_shared()
    assert lock_objects(repo) == []


def test_failed_exclusive_attempt_removes_its_lock(repo):
    lock = Lock(repo, "exclusive", "prune")
    repo.backend.fail.add("list")
    with pytest.raises(BackendError):
        lock.try_exclusive()
    assert lock_objects(repo) == []


def test_taking_a_lock_does_not_read_our_own_lock_back(repo, monkeypatch):
    other = Lock(repo, SHARED, "backup")
    other.acquire_shared()
    reads = []
    real_get = LocalBackend.get
    monkeypatch.setattr(LocalBackend, "get", lambda self, name, *a: (reads.append(name),
                                                                     real_get(self, name, *a))[1])
    lock = Lock(repo, SHARED, "backup")
    lock.acquire_shared()
    assert reads == [f"locks/{other.info.id}"]  # the other lock only: ours is known
    lock.release()
    other.release()
