"""Entry point: global flags, command registration, and errors -> one line + exit code."""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import threading
import traceback

import click

from dedupe import __version__
from dedupe.errors import Interrupted, SnapError

from .app import App
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, describe, exit_code_for
from .malloc import tune_malloc

# One module per command (cli/cmd_<name>.py); each defines ``command``.
COMMANDS = ["init", "key", "backup", "restore", "snapshots", "prune", "unlock", "ls", "find", "diff",
            "dump", "cat", "stats", "tag", "mount", "check", "repair", "forget"]


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs: start-up stays fast (a
    nightly cron job should not pay for boto3 or numpy imports it does not use)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"cli.cmd_{name}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-r", "--repo", "repo_url", envvar="SNAP_REPOSITORY", metavar="URL",
              help="Repository: a directory, or s3:BUCKET/PREFIX, or "
                   "s3:http[s]://HOST[:PORT]/BUCKET/PREFIX (env SNAP_REPOSITORY).")
@click.option("--password-file", envvar="SNAP_PASSWORD_FILE", metavar="FILE",
              help="Read the password from FILE (env SNAP_PASSWORD_FILE).")
@click.option("--password-command", envvar="SNAP_PASSWORD_COMMAND", metavar="CMD",
              help="Run CMD and use its output as password (env SNAP_PASSWORD_COMMAND).")
@click.option("--no-cache", is_flag=True, help="Do not use the local cache.")
@click.option("--cache-dir", envvar="SNAP_CACHE_DIR", metavar="DIR",
              help="Cache directory (env SNAP_CACHE_DIR; default $XDG_CACHE_HOME/snap).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="More output (repeat for more).")
@click.option("--json", "json_", is_flag=True, help="Machine readable output.")
@click.option("--s3-storage-class", metavar="CLASS",
              help="S3 storage class for data packs (STANDARD, STANDARD_IA, ONEZONE_IA, "
                   "INTELLIGENT_TIERING, GLACIER_IR). Metadata always stays STANDARD.")
@click.option("--s3-connections", type=click.IntRange(1, 256), default=5, show_default=True,
              help="Parallel S3 transfers (restore and check hold up to a pack per transfer).")
@click.option("--s3-path-style/--s3-virtual-hosted", default=None,
              help="S3 addressing style (default: path style for custom endpoints).")
@click.version_option(__version__, prog_name="snap")
@click.pass_context
def cli(ctx: click.Context, repo_url, password_file, password_command, no_cache, cache_dir,
        quiet, verbose, json_, s3_storage_class, s3_connections, s3_path_style) -> None:
    """snap: deduplicating, encrypted backups to a local directory or S3."""
    backend_options = {"connections": s3_connections}
    if s3_storage_class:
        backend_options["storage_class"] = s3_storage_class
    if s3_path_style is not None:
        backend_options["path_style"] = s3_path_style
    app = App(repo_url=repo_url, password_file=password_file,
              password_command=password_command, no_cache=no_cache, cache_dir=cache_dir,
              quiet=quiet, verbose=verbose, json=json_, backend_options=backend_options)
    ctx.obj = app
    ctx.call_on_close(app.close)


# Global flags may also be written after the command, as with restic (`snap backup -q /x`).
_GLOBAL_WITH_VALUE = {"-r", "--repo", "--password-file", "--password-command", "--cache-dir",
                      "--s3-storage-class", "--s3-connections"}
_GLOBAL_FLAGS = {"--no-cache", "-q", "--quiet", "-v", "-vv", "-vvv", "--verbose", "--json",
                 "--s3-path-style", "--s3-virtual-hosted"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global flags found after the command name in front of it (stops at ``--``)."""
    front, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif name in _GLOBAL_WITH_VALUE and "=" in arg:
            front.append(arg)
        elif arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front.extend(argv[i:i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _on_sigterm(signum, frame) -> None:
    raise Interrupted("terminated")


def main(argv: list[str] | None = None) -> None:
    tune_malloc()
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
        if not args:
            args = ["--help"]  # bare `snap`: the help, not a usage error
        rv = cli.main(args=args, prog_name="snap", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0  # commands may return an exit code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("snap: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except click.ClickException as exc:  # bad flags and arguments
        click.echo(f"snap: {exc.format_message()}", err=True)
        code = EXIT_ERROR
    except (SnapError, KeyboardInterrupt) as exc:
        click.echo(f"snap: {describe(exc)}", err=True)
        code = exit_code_for(exc)
    except BrokenPipeError:
        code = EXIT_ERROR
    except OSError as exc:
        click.echo(f"snap: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                   err=True)
        code = EXIT_ERROR
    except Exception as exc:  # a bug: still one line, the traceback only when asked (-vv)
        words = argv if argv is not None else sys.argv[1:]
        vs = sum(w.count("v") for w in words if w.startswith("-v") and set(w[1:]) == {"v"})
        if vs + words.count("--verbose") >= 2:  # -vv, -v -v, --verbose --verbose
            traceback.print_exc()
        click.echo(f"snap: internal error: {type(exc).__name__}: {exc} (run with -vv for details)",
                   err=True)
        code = EXIT_ERROR
    _exit(code)


def _exit(code: int) -> None:
    """End the process as ``sys.exit`` would, but without the interpreter's teardown.

    By now the command has written (and synced) everything it writes. What the teardown adds
    is freeing every object, module and mapping, which the kernel does anyway when the process
    ends: 40-60 ms of a 0.4 s unchanged re-backup. The rest of ``sys.exit``'s work is done
    here: ``atexit`` handlers run (``weakref.finalize`` clean-ups among them) and the standard
    streams are flushed. If a thread that is not a daemon is still alive (none is, after any
    command of ours), the interpreter winds it down as usual: it knows, for instance, to stop
    an executor's idle workers before it joins them."""
    main_thread = threading.main_thread()
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None or any(t is not main_thread and not t.daemon and t.is_alive()
                                    for t in threading.enumerate()):
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`snap ls | head`), a closed stream
            pass
    os._exit(code)
