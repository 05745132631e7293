"""Mounting a ``SnapshotFS`` with mfusepy over libfuse3, serving it, and unmounting cleanly.

What mfusepy does not do for us, and why it is here:
- choose libfuse3 (mfusepy prefers libfuse 2 when both are installed);
- READDIRPLUS: readdir hands the kernel every entry's attributes, so ``ls -l`` of a large
  directory needs no LOOKUP round trip per entry;
- reads copied straight from the cached blob into libfuse's buffer;
- libfuse's log messages into ``logging`` (logger ``dedupe.fuse``) instead of stderr;
- shutdown on SIGINT/SIGTERM/SIGHUP that always unmounts, also with files held open
  (``auto_unmount`` covers a process that is killed outright);
- rare cyclic garbage collection while serving (see ``serve``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gc
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable

from .errors import Interrupted, MountError
from .fuse import SnapshotFS, ENOATTR

log = logging.getLogger("dedupe.fuse")

FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags: the stat passed to the filler is complete


def _libfuse3_path() -> str | None:
    return os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library("fuse3")


def fuse_problem() -> str | None:
    """Why a mount cannot work on this machine (one line), or None."""
    if not os.path.exists("/dev/fuse"):
        return ("FUSE is not available: /dev/fuse is missing (load the fuse kernel module; "
                "in a container, pass the device /dev/fuse in)")
    if _libfuse3_path() is None:
        return "FUSE is not available: libfuse3 is not installed (apt-get install fuse3)"
    if shutil.which("fusermount3") is None:
        return "FUSE is not available: fusermount3 is not installed (apt-get install fuse3)"
    return None


def _mfusepy():
    path = _libfuse3_path()
    if path is None:
        raise MountError("libfuse3 is not installed (apt-get install fuse3)")
    # mfusepy picks its library when first imported and prefers libfuse 2 if both are
    # installed; libfuse 2 has no READDIRPLUS and no fusermount3.
    os.environ.setdefault("FUSE_LIBRARY_PATH", path)
    try:
        import mfusepy
    except (OSError, AttributeError) as exc:
        raise MountError(f"cannot load libfuse3: {exc}") from None
    if mfusepy.fuse_version_major != 3:
        raise MountError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}, snap mount needs "
                         "libfuse3 (apt-get install fuse3; unset FUSE_LIBRARY_PATH)")
    return mfusepy


_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
               4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
_log_hook = None
_libfuse_errors: list[str] = []
_serving = threading.Event()


def _route_libfuse_log() -> None:
    """Send libfuse's messages (normally printed on stderr) to ``logging``; keep the last
    errors for the MountError of a failed mount."""
    global _log_hook
    if _log_hook is not None:
        return
    try:
        lib = ctypes.CDLL(_libfuse3_path())
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        def hook(level, fmt, args):  # va_list arrives as a pointer on x86-64 and arm64
            buf = ctypes.create_string_buffer(2048)
            vsnprintf(buf, len(buf), fmt, args)
            msg = buf.value.decode("utf-8", "replace").strip()
            if msg.startswith("Ignoring invalid max threads"):
                level = 7  # libfuse 3.14 rejects its own default; harmless
            if level <= 3 and not _serving.is_set():
                # Before the mount is up, an error is why mounting failed: it becomes the
                # MountError's message rather than a second line on stderr.
                del _libfuse_errors[:-4]
                _libfuse_errors.append(msg)
                level = 7
            log.log(_LOG_LEVELS.get(level, logging.DEBUG), "libfuse: %s", msg)

        lib.fuse_set_log_func(hook)
        _log_hook = hook  # keep the callback alive for the life of the process
    except (OSError, AttributeError):
        pass  # older libfuse3: messages stay on stderr


_tls = threading.local()


def _address(data: bytes) -> int:
    """Address of a bytes object's buffer (valid while ``data`` is referenced)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


def _pin_thread_state() -> None:
    """Keep this libfuse worker's Python thread state for the thread's life.

    ctypes runs each callback between PyGILState_Ensure and PyGILState_Release; on a thread
    Python did not create, that builds and tears down a thread state on every call. One extra
    Ensure that is never released makes the state permanent.
    """
    ctypes.pythonapi.PyGILState_Ensure.restype = ctypes.c_int
    ctypes.pythonapi.PyGILState_Ensure()
    _tls.pinned = True


def _fuse_class(mfusepy):
    class PlusFUSE(mfusepy.FUSE):
        """mfusepy's FUSE with faster paths for what file browsing does most: readdir with
        every entry's attributes, reads without intermediate copies, getxattr misses without
        exceptions, and permanent thread states for libfuse's worker threads."""

        def _wrapper(self, func, *args, **kwargs):
            # mfusepy's wrapper, leaner (this runs for every request) and with EIO rather than
            # EINVAL for a bug: the caller sees a failed read, not a misleading argument error.
            if not getattr(_tls, "pinned", False):
                _pin_thread_state()
            try:
                return func(*args, **kwargs) or 0
            except OSError as exc:
                if func.__name__.startswith("init"):
                    raise
                code = exc.errno
                return -code if isinstance(code, int) and code > 0 else -errno.EIO
            except Exception:
                if func.__name__.startswith("init"):
                    raise
                log.exception("FUSE operation %s failed", func.__name__)
                return -errno.EIO
            except BaseException:  # noqa: BLE001 - never unwind into libfuse's C frames
                log.critical("FUSE operation %s was aborted", func.__name__, exc_info=True)
                mfusepy.fuse_exit()
                return -errno.EFAULT

        def read(self, path, buf, size, offset, fip):
            # Straight from the cached blobs into libfuse's buffer: one copy, not three.
            dest = ctypes.cast(buf, ctypes.c_void_p).value
            pos = 0
            for data, lo, hi in self.operations.read_segments(size, offset, fip.contents.fh):
                n = hi - lo
                if data is None:
                    ctypes.memset(dest + pos, 0, n)
                else:
                    if type(data) is not bytes:  # noqa: E721 - _address needs real bytes
                        data = bytes(data)
                    ctypes.memmove(dest + pos, _address(data) + lo, n)
                pos += n
            return pos

        def getxattr(self, path, name, value, size, *args):
            # Without an exception for the common "no such attribute" answer: ls -l asks
            # two of them (SELinux label, ACL) for every file.
            data = self.operations.xattr(path.decode(self.encoding, self.errors),
                                         name.decode(self.encoding, self.errors))
            if data is None:
                return -ENOATTR
            if not value:
                return len(data)
            if len(data) > size:
                return -errno.ERANGE
            ctypes.memmove(value, data, len(data))
            return len(data)

        def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
            # Entries carry offsets (index + 1) and, with READDIRPLUS, complete attributes:
            # libfuse 3.14 only passes attributes on to the kernel for entries filled with a
            # nonzero offset; with offset 0 the kernel would LOOKUP every entry afterwards.
            entries = self.operations.listing(path.decode(self.encoding, self.errors),
                                              fip.contents.fh, offset)
            st = mfusepy.c_stat()
            atime, mtime, ctime = st.st_atimespec, st.st_mtimespec, st.st_ctimespec
            encoding, errors = self.encoding, self.errors
            for i in range(offset, len(entries)):
                name, t = entries[i]
                raw = name.encode(encoding, errors)
                if t is None:
                    full = filler(buf, raw, None, i + 1, 0)
                else:
                    # Field by field: mfusepy's set_st_attrs costs several times more, and a
                    # 10,000-entry directory pays it 10,000 times.
                    (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                     st.st_blocks, st.st_rdev) = t[:8]
                    atime.tv_sec, atime.tv_nsec = divmod(t[8], 1_000_000_000)
                    mtime.tv_sec, mtime.tv_nsec = divmod(t[9], 1_000_000_000)
                    ctime.tv_sec, ctime.tv_nsec = divmod(t[10], 1_000_000_000)
                    full = filler(buf, raw, st, i + 1, FILL_DIR_PLUS)
                if full:
                    break
            return 0

    return PlusFUSE


def _mounts(mountpoint: str) -> list[str]:
    """The "major:minor" device of every mount at ``mountpoint``, bottom to top."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return [fields[2] for fields in (line.split() for line in f)
                if len(fields) > 4 and _unescape(fields[4]) == target]


def is_mounted(mountpoint: str, device: str | None = None) -> bool:
    """True if something (``device``: that "major:minor" device) is mounted at ``mountpoint``,
    dead FUSE mounts included (``os.path.ismount`` says False there, as stat fails)."""
    try:
        devices = _mounts(mountpoint)
    except OSError:
        return os.path.ismount(mountpoint)
    return bool(devices) if device is None else device in devices[-1:]


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes in /proc mount tables (space is \\040, and so on)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def lazy_unmount(mountpoint: str) -> bool:
    """``fusermount3 -u -z``: detach now, even while files are open. True on success."""
    try:
        return subprocess.run(["fusermount3", "-u", "-z", "-q", mountpoint],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def serve(fs: SnapshotFS, mountpoint: str, *, allow_other: bool = False,
          default_permissions: bool = True, on_ready: Callable[[], None] | None = None,
          stop_timeout: float = 10.0) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until it is unmounted from outside
    (``fusermount3 -u``) or this process gets SIGINT, SIGTERM or SIGHUP; then unmount (lazily,
    so open files do not keep the mount alive) and return. ``on_ready`` runs once the mount
    is usable. Call from the main thread.

    Why libfuse runs in a helper thread: the main thread stays in Python, so signals arrive as
    ordinary exceptions (KeyboardInterrupt, ``Interrupted``) wherever they are delivered, and
    shutdown is ordered here. libfuse's own handlers would only wake its loop if the signal
    happened to hit the right thread, and install themselves only after mounting. Shutdown
    looks up a secret name in the root; that callback calls ``fuse_exit`` from inside the
    session, libfuse's loop returns and unmounts.
    """
    mfusepy = _mfusepy()
    _route_libfuse_log()
    options = dict(foreground=True, ro=True, nosuid=True, nodev=True, fsname="snap",
                   subtype="snap", use_ino=True, kernel_cache=True, auto_unmount=True,
                   entry_timeout=10.0, attr_timeout=10.0,
                   default_permissions=default_permissions, allow_other=allow_other)
    fuse_cls = _fuse_class(mfusepy)
    wake = threading.Event()
    result: dict = {}

    def run() -> None:
        _block_signals()  # inherited by libfuse's worker threads
        try:
            fuse_cls(fs, mountpoint, **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc
        finally:
            result["done"] = True
            wake.set()

    def initialized() -> None:
        _serving.set()
        wake.set()

    fs._on_init = initialized
    del _libfuse_errors[:]
    _serving.clear()
    saved = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Decoding a large directory allocates tens of thousands of dicts; with the default
    # thresholds the cyclic GC then rescans every long-lived object (index, cached trees)
    # several times per listing: half the CPU of a cold ls -l. Nothing here relies on
    # prompt cycle collection, so collect rarely, and never rescan what exists already.
    gc_saved = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    thread = threading.Thread(target=run, name="snap-fuse", daemon=True)
    device = None  # "major:minor" of our mount, to never touch another mount at the same path
    announced = False
    try:
        thread.start()
        while True:
            wake.wait()
            wake.clear()
            if fs.ready.is_set() and not announced and "done" not in result:
                announced = True
                device = _device_of(mountpoint)
                if on_ready is not None:
                    on_ready()
            if "done" in result:
                break
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        try:
            if thread.is_alive():
                _stop(fs, mountpoint, thread, stop_timeout, device)
            if device is not None and is_mounted(mountpoint, device):
                lazy_unmount(mountpoint)  # libfuse did not get to it (a callback hung)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            gc.set_threshold(*gc_saved)
            gc.unfreeze()
            fs.close()
    error = result.get("error")
    if isinstance(error, RuntimeError) and not fs.ready.is_set():
        detail = _libfuse_errors[-1] if _libfuse_errors else f"libfuse error {error}"
        raise MountError(f"cannot mount {mountpoint}: {detail}")
    if error is not None and not isinstance(error, RuntimeError):
        raise error


def _device_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def _poke_exit(fs: SnapshotFS, mountpoint: str, device: str | None) -> None:
    """Look up the exit name in our mount's root (not in a mount stacked on top of it)."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" == device:
            os.stat(fs.exit_name, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stop(fs: SnapshotFS, mountpoint: str, thread: threading.Thread, timeout: float,
          device: str | None) -> None:
    """End the session: poke it with the exit lookup; after ``timeout`` (a callback stuck on
    storage), detach the mount instead and give up on the session."""
    deadline = time.monotonic() + timeout
    detached = False
    while thread.is_alive():
        try:
            if fs.ready.is_set() and device is None:
                device = _device_of(mountpoint)
            if device is not None and not detached:
                _poke_exit(fs, mountpoint, device)
            thread.join(1.0)
            if thread.is_alive() and time.monotonic() > deadline:
                if detached or device is None:
                    return
                log.warning("the filesystem did not stop within %.0f s; detaching %s",
                            timeout, mountpoint)
                if is_mounted(mountpoint, device):
                    lazy_unmount(mountpoint)
                detached = True
                deadline = time.monotonic() + 5.0
        except (KeyboardInterrupt, Interrupted):
            continue  # already stopping
