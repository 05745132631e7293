"""snap mount: browse the repository's snapshots as a read-only filesystem."""

from __future__ import annotations

import errno
import logging
import os
import stat

import click

from dedupe.locks import SHARED, Lock

from .app import App, UsageError, pass_app
from .selection import filter_options, make_filter


def _check_mountpoint(mountpoint: str) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        hint = (f" (a stale mount? run 'fusermount3 -u {mountpoint}')"
                if exc.errno == errno.ENOTCONN else "")  # a FUSE mount whose process died
        raise UsageError(f"mountpoint {mountpoint}: {exc.strerror}{hint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")


def _log_to_stderr(app: App) -> None:
    """Library log lines (EIO on a damaged blob, refresh failures) as one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("snap: %(message)s"))
    logger = logging.getLogger("dedupe")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if app.verbose >= 2 else
                    logging.INFO if app.verbose else logging.WARNING)


@click.command("mount")
@click.argument("mountpoint", type=click.Path())
@filter_options
@click.option("--allow-other", is_flag=True,
              help="Let other users access the mount (non-root: needs user_allow_other in "
                   "/etc/fuse.conf).")
@click.option("--no-default-permissions", is_flag=True,
              help="With --allow-other: do not check file permissions, every user may read "
                   "every file.")
@click.option("--no-lock", is_flag=True,
              help="Do not lock the repository (for read-only media; prune may then delete "
                   "data the mount still shows).")
@pass_app
def command(app: App, mountpoint, hosts, tags, paths, allow_other, no_default_permissions,
            no_lock) -> int:
    """Serve the repository as a read-only filesystem at MOUNTPOINT until Ctrl-C.

    Layout: snapshots/<time>/ (and snapshots/latest), ids/<short id>/, hosts/<host>/<time>/,
    tags/<tag>/<time>/. New snapshots appear when a listing is re-read.
    """
    _check_mountpoint(mountpoint)
    from dedupe.fuse import SnapshotFS
    from dedupe.fusemount import fuse_problem, serve

    problem = fuse_problem()
    if problem:
        raise UsageError(problem)
    _log_to_stderr(app)
    repo = app.open_repo()
    # A shared lock, as a backup holds: prune then only marks the packs it would delete and
    # leaves them in place while we run, so files being read do not vanish.
    lock = None if no_lock else Lock(repo, SHARED, "mount")
    if lock is not None:
        lock.acquire_shared()
    try:
        repo.index  # noqa: B018 - load it before mounting, not in the first lookup
        fs = SnapshotFS(repo, make_filter(hosts, tags, paths))

        def ready() -> None:
            if app.json:  # scripts learn when the mount is usable
                app.emit_json({"message_type": "mounted", "mountpoint": mountpoint})
            app.info(f"Now serving the repository at {mountpoint}; use another terminal to "
                     "browse, Ctrl-C to unmount")

        serve(fs, mountpoint, allow_other=allow_other,
              default_permissions=not no_default_permissions, on_ready=ready)
    finally:
        if lock is not None:
            lock.release()
    app.verbose_info(f"unmounted {mountpoint}")
    return 0
